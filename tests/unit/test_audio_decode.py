"""Decoding every supported input to 16 kHz mono, probing, and the failure codes."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from earshot.audio import (
    SAMPLE_RATE,
    AudioInfo,
    decode_all,
    decode_stream,
    format_duration,
    probe,
    read_audio,
    write_flac,
    write_wav,
)
from earshot.audio import decode as decode_module
from earshot.audio.synth import encode_file, tone_with_silences
from earshot.errors import AudioError, InputError

FORMATS = ["wav", "flac", "mp3", "ogg", "m4a", "webm", "mp4"]
# The codec name FFmpeg reports for each format's audio stream.
CODECS = {
    "wav": "pcm_s16le",
    "flac": "flac",
    "mp3": "mp3",
    "ogg": "opus",
    "m4a": "aac",
    "webm": "opus",
    "mp4": "aac",
}
SILENCE = (1.0, 1.5)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.fixture(scope="module")
def stereo_44k() -> np.ndarray:
    """3 s of stereo speech-like audio at 44.1 kHz with a pause at 1.0-1.5 s."""
    return tone_with_silences(3.0, [SILENCE], 44100, channels=2)


@pytest.fixture(scope="module")
def encoded(stereo_44k: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    return {
        fmt: encode_file(stereo_44k, folder / f"speech.{fmt}", sample_rate=44100) for fmt in FORMATS
    }


@pytest.fixture(scope="module")
def mp3_20s(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mp3")
    audio = tone_with_silences(20.0, [(10.0, 11.0)], 44100, seed=3)
    return encode_file(audio, folder / "long.mp3", sample_rate=44100)


# ------------------------------------------------------------------------ every format


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_16k_mono_with_the_right_length(
    fmt: str, encoded: dict[str, Path]
) -> None:
    audio = decode_all(encoded[fmt])

    assert audio.dtype == np.float32
    assert audio.ndim == 1
    # 3 s at 44.1 kHz stereo -> 48000 mono samples at 16 kHz, to the sample: encoder
    # delay is trimmed and the resampler is flushed (that alone is 16 samples). AAC alone
    # keeps its padding up to a whole 1024-sample frame: 130 frames = 3.0185 s.
    expected = round(130 * 1024 / 44100 * SAMPLE_RATE) if CODECS[fmt] == "aac" else 48000
    assert abs(audio.shape[0] - expected) <= 2
    # The content survived, in the right place: speech around the pause, silence inside.
    assert rms(audio[: int(0.9 * SAMPLE_RATE)]) > 0.03
    assert rms(audio[int(1.6 * SAMPLE_RATE) :]) > 0.03
    assert rms(audio[int(1.1 * SAMPLE_RATE) : int(1.4 * SAMPLE_RATE)]) < 1e-3
    assert np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("fmt", FORMATS)
def test_probe_describes_every_format(fmt: str, encoded: dict[str, Path]) -> None:
    info = probe(encoded[fmt])

    assert isinstance(info, AudioInfo)
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.channels == 2
    assert info.codec.startswith(CODECS[fmt])
    # Opus only runs at 48 kHz (and lower); every other codec kept the source rate.
    assert info.sample_rate == (48000 if CODECS[fmt] == "opus" else 44100)
    assert info.size_bytes == encoded[fmt].stat().st_size
    assert info.format_name


def test_the_mp4_really_has_a_video_stream_and_its_audio_track_is_used(
    encoded: dict[str, Path],
) -> None:
    with av.open(str(encoded["mp4"])) as container:
        kinds = sorted(stream.type for stream in container.streams)
    assert kinds == ["audio", "video"]
    assert probe(encoded["mp4"]).codec == "aac"


def test_resampling_keeps_pitch(tmp_path: Path) -> None:
    """A 1 kHz tone at 44.1 kHz must still be 1 kHz at 16 kHz (not just the right length)."""
    t = np.arange(44100 * 2) / 44100
    tone = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    path = tmp_path / "tone.wav"
    write_wav(tone, path, 44100)

    audio = decode_all(path)

    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / audio.shape[0]
    assert peak_hz == pytest.approx(1000.0, abs=2.0)
    assert rms(audio) == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_16k_mono_wav_passes_through_unchanged(tmp_path: Path) -> None:
    original = tone_with_silences(2.0, [(0.5, 0.7)], SAMPLE_RATE)
    path = tmp_path / "mono.wav"
    write_wav(original, path)

    audio = decode_all(path)

    assert audio.shape == original.shape
    # Only 16-bit quantisation separates them: no shift, no gain, no filtering.
    assert np.max(np.abs(audio - original)) <= 1.0 / 32768 + 1e-7


def test_stereo_is_downmixed_not_left_channel_only(tmp_path: Path) -> None:
    left = np.full(SAMPLE_RATE, 0.5, dtype=np.float32)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    path = encode_file(stereo, tmp_path / "left_only.wav")

    audio = decode_all(path)

    # FFmpeg's stereo->mono matrix weighs each side by -3 dB (1/sqrt 2).
    assert np.median(audio) == pytest.approx(0.5 / np.sqrt(2), abs=1e-3)


# ------------------------------------------------------------------------ streaming


def test_decode_stream_yields_fixed_chunks_that_add_up_to_decode_all(mp3_20s: Path) -> None:
    chunks = list(decode_stream(mp3_20s, chunk_s=4.0))

    sizes = [c.shape[0] for c in chunks]
    assert all(size == 4 * SAMPLE_RATE for size in sizes[:-1])
    assert 0 < sizes[-1] <= 4 * SAMPLE_RATE
    assert abs(sum(sizes) - 20 * SAMPLE_RATE) <= 0.01 * 20 * SAMPLE_RATE
    np.testing.assert_array_equal(np.concatenate(chunks), decode_all(mp3_20s))
    # The pause at 10-11 s lands at the same place after decoding and resampling.
    whole = np.concatenate(chunks)
    assert rms(whole[int(10.1 * SAMPLE_RATE) : int(10.9 * SAMPLE_RATE)]) < 1e-3


def test_decode_stream_is_lazy(mp3_20s: Path) -> None:
    stream = decode_stream(mp3_20s, chunk_s=1.0)
    first = next(stream)
    assert first.shape == (SAMPLE_RATE,)
    stream.close()  # closing early must release the container without error


def test_decoding_to_another_sample_rate_keeps_the_duration(mp3_20s: Path) -> None:
    audio = np.concatenate(list(decode_stream(mp3_20s, sample_rate=8000)))
    assert abs(audio.shape[0] - 20 * 8000) <= 0.01 * 20 * 8000


def test_truncated_mp3_decodes_what_is_there(mp3_20s: Path, tmp_path: Path) -> None:
    data = mp3_20s.read_bytes()
    half = tmp_path / "half.mp3"
    half.write_bytes(data[: len(data) // 2])

    audio = decode_all(half)

    assert audio.shape[0] / SAMPLE_RATE == pytest.approx(10.0, abs=1.0)


def test_sample_rate_and_channel_changes_mid_stream(tmp_path: Path) -> None:
    """Concatenated MP3s (legal, and common from cutters) switch rate and layout midway;
    PyAV's resampler alone refuses that. One bad packet at the seam is skipped."""
    first = encode_file(tone_with_silences(2.0, [], 44100), tmp_path / "a.mp3", sample_rate=44100)
    second = encode_file(
        tone_with_silences(2.0, [], 22050, channels=2), tmp_path / "b.mp3", sample_rate=22050
    )
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())

    audio = decode_all(joined)

    assert audio.shape[0] / SAMPLE_RATE == pytest.approx(4.0, abs=0.1)
    assert rms(audio[:SAMPLE_RATE]) > 0.03
    assert rms(audio[-SAMPLE_RATE:]) > 0.03


# ------------------------------------------------------------------------ bad inputs


def expect_code(path: Path, code: str) -> AudioError:
    with pytest.raises(AudioError) as caught:
        decode_all(path)
    assert caught.value.code == code, caught.value.message
    assert isinstance(caught.value, InputError)  # jobs fail without retry
    assert caught.value.message == str(caught.value)
    return caught.value


def test_empty_file_fails_with_code_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    error = expect_code(path, "empty_file")
    assert error.message == "file is empty (0 bytes)"
    with pytest.raises(AudioError, match="empty"):
        probe(path)


def test_random_bytes_are_not_audio(tmp_path: Path) -> None:
    noise = bytearray(np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    noise[0] = 0x00  # no accidental MPEG frame sync at byte 0
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(noise))
    error = expect_code(path, "not_audio")
    assert error.message.startswith("not an audio file")


def test_text_named_wav_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("meeting notes\nnothing to hear here\n" * 50)
    expect_code(path, "not_audio")
    with pytest.raises(AudioError) as caught:
        probe(path)
    assert caught.value.code == "not_audio"


def test_video_without_audio_says_no_audio_stream(tmp_path: Path) -> None:
    path = tmp_path / "silent_film.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=5)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 5)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    error = expect_code(path, "not_audio")
    assert "no audio stream" in error.message
    assert "video" in error.message


@pytest.mark.parametrize("keep", [4, 10, 300])
def test_mp3_cut_to_a_few_bytes_fails_cleanly_as_corrupt(
    keep: int, mp3_20s: Path, tmp_path: Path
) -> None:
    path = tmp_path / f"cut{keep}.mp3"
    path.write_bytes(mp3_20s.read_bytes()[:keep])
    error = expect_code(path, "corrupt_audio")
    assert "MP3" in error.message and "truncated" in error.message


def test_wav_with_zero_samples_has_zero_duration(tmp_path: Path) -> None:
    path = encode_file(np.zeros(0, np.float32), tmp_path / "nothing.wav")
    assert path.stat().st_size > 0  # a valid header, just no data
    error = expect_code(path, "zero_duration")
    assert "no audio" in error.message


def test_garbage_in_the_middle_is_corrupt(mp3_20s: Path, tmp_path: Path) -> None:
    data = bytearray(mp3_20s.read_bytes())
    a, b = int(len(data) * 0.3), int(len(data) * 0.7)
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    path = tmp_path / "damaged.mp3"
    path.write_bytes(bytes(data))
    error = expect_code(path, "corrupt_audio")
    assert "decoding failed at 0:" in error.message


def test_missing_file_is_not_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "never_downloaded.wav")


def test_too_long_by_header(encoded: dict[str, Path]) -> None:
    with pytest.raises(AudioError) as caught:
        probe(encoded["flac"], max_duration_s=2.0)
    assert caught.value.code == "too_long"
    assert caught.value.message == "audio is too long: 0:03 exceeds the limit of 0:02"
    assert probe(encoded["flac"], max_duration_s=3.5).duration_s == pytest.approx(3.0)


def test_too_long_by_decoded_length_when_the_header_is_silent(
    encoded: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Headers can lack a duration (or lie): the limit is enforced while decoding too."""
    real_probe = decode_module.probe

    def headerless(path: str | Path, *, max_duration_s: float | None = None) -> AudioInfo:
        info = real_probe(path)
        return AudioInfo(None, info.format_name, info.codec, 44100, 2, info.size_bytes)

    monkeypatch.setattr(decode_module, "probe", headerless)
    stream = decode_stream(encoded["flac"], chunk_s=0.5, max_duration_s=2.0)
    taken = []
    with pytest.raises(AudioError) as caught:
        for chunk in stream:
            taken.append(chunk)
    assert caught.value.code == "too_long"
    # It stopped as soon as the limit was crossed, not after decoding everything.
    assert sum(c.shape[0] for c in taken) <= 2.0 * SAMPLE_RATE


def test_format_duration_rounds_to_seconds_and_adds_hours() -> None:
    assert format_duration(0) == "0:00"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(3 * 3600) == "3:00:00"


# ------------------------------------------------------------------------ FLAC / WAV out


def test_flac_roundtrip_is_16_bit_exact(tmp_path: Path) -> None:
    original = tone_with_silences(1.0, [], SAMPLE_RATE)
    path = tmp_path / "seg.flac"
    write_flac(original, path)

    audio, sr = read_audio(path)

    assert sr == SAMPLE_RATE
    assert audio.dtype == np.float32 and audio.shape == original.shape
    assert np.max(np.abs(audio - original)) <= 1.0 / 32768 + 1e-7
    assert probe(path).codec == "flac"


def test_flac_clips_instead_of_wrapping_around() -> None:
    loud = np.array([0.0, 1.5, -2.0, 0.25], dtype=np.float32)
    buffer = io.BytesIO()
    write_flac(loud, buffer)
    buffer.seek(0)

    audio, _ = read_audio(buffer)

    np.testing.assert_allclose(audio, [0.0, 1.0, -1.0, 0.25], atol=1 / 32768)


def test_float_wav_is_exact_and_stereo_reads_as_mono(tmp_path: Path) -> None:
    original = np.linspace(-0.9, 0.9, 1000, dtype=np.float32)
    write_wav(original, tmp_path / "f.wav", subtype="FLOAT")
    audio, _ = read_audio(tmp_path / "f.wav")
    np.testing.assert_array_equal(audio, original)

    stereo = np.stack([original, np.zeros_like(original)], axis=1)
    encode_file(stereo, tmp_path / "s.wav")
    mono, _ = read_audio(tmp_path / "s.wav")
    np.testing.assert_allclose(mono, original / 2, atol=1 / 32768)


def test_writers_reject_multichannel_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mono"):
        write_flac(np.zeros((10, 2), np.float32), tmp_path / "x.flac")
