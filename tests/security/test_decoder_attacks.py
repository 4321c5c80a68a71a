"""Issue 14, "local file read through a playlist": uploads that name other inputs are not followed."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from earshot.audio.decode import decode_all, probe
from earshot.errors import AudioError


def _secret_mp3(path: Path) -> Path:
    """A local file the attacker wants read (any file FFmpeg can demux would do)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mp3", rate=16000)
        stream.layout = "mono"  # type: ignore[union-attr]
        t = np.linspace(0, 1, 16000, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 440 * t))[None, :], format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:  # type: ignore[union-attr]
            out.mux(packet)
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    return _secret_mp3(tmp_path / "secret.mp3")


def _playlists(tmp_path: Path, secret: Path) -> dict[str, Path]:
    files = {
        "hls-absolute.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{secret.as_uri()}\n#EXT-X-ENDLIST\n",
        "hls-relative.m3u8": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{secret.name}\n#EXT-X-ENDLIST\n",
        # an HLS playlist under an audio name: the extension does not matter, the demuxer does
        "disguised.mp3": f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{secret.name}\n#EXT-X-ENDLIST\n",
        "list.ffconcat": f"ffconcat version 1.0\nfile '{secret}'\n",
    }
    out = {}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    return out


def test_ffmpeg_alone_would_follow_the_playlist(tmp_path: Path, secret: Path) -> None:
    """The attack is real: without the allow-list FFmpeg reads the file the playlist names."""
    playlist = _playlists(tmp_path, secret)["hls-absolute.m3u8"]
    with av.open(str(playlist)) as container:
        assert container.format.name == "hls"
        assert sum(f.samples for f in container.decode(audio=0)) > 8000


@pytest.mark.parametrize("name", ["hls-absolute.m3u8", "hls-relative.m3u8", "disguised.mp3", "list.ffconcat"])
def test_uploaded_playlist_is_not_audio_and_nothing_is_read(tmp_path: Path, secret: Path, name: str) -> None:
    upload = _playlists(tmp_path, secret)[name]
    with pytest.raises(AudioError) as caught:
        probe(upload)
    assert caught.value.code in ("not_audio", "corrupt_audio")
    with pytest.raises(AudioError):
        decode_all(upload)


def test_protocol_names_in_paths_are_files_not_protocols(tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "concat:a|b" (or "http:...") as a relative file name must open that file, never a protocol
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"concat:{secret.name}|{secret.name}").write_bytes(b"not audio at all")
    with pytest.raises(AudioError) as caught:
        probe(f"concat:{secret.name}|{secret.name}")
    assert caught.value.code == "not_audio"


def test_real_audio_still_decodes(secret: Path) -> None:
    assert probe(secret).format_name == "mp3"
    assert decode_all(secret).shape[0] > 15000


def test_a_playlist_job_fails_as_not_audio_end_to_end(earshot_env: object, tmp_path: Path, secret: Path) -> None:
    """The pipeline (`earshot run`, PostgreSQL, the real worker task) ends the job failed, readably."""
    import json

    from typer.testing import CliRunner

    from services.cli.main import app

    playlist = _playlists(tmp_path, secret)["hls-absolute.m3u8"]
    result = CliRunner().invoke(app, ["run", "--json", str(playlist), "--tasks", "transcribe"])
    [report] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.exit_code == 1 and report["status"] == "failed"
    assert report["error"]["code"] == "not_audio" and "not an audio file" in report["error"]["message"]
    assert not report.get("transcript")
