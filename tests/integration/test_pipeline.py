"""The local end-to-end job through the production path: CLI -> Celery (eager) -> pipeline -> DB."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import soundfile as sf
from sqlalchemy import func, select
from typer.testing import CliRunner

from earshot import exports, storage
from earshot.audio import synth
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.engines import get_engine
from earshot.pipeline import analyze_segment, finalize_job
from services.cli.main import app
from tests.fixtures.speech import spoken

runner = CliRunner()


def run_cli(*args: str) -> tuple[int, list[dict[str, object]]]:
    result = runner.invoke(app, ["run", "--json", *args])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, lines


def speech_file(tmp_path: Path, name: str, seconds: float, silences: list[tuple[float, float]]) -> Path:
    """eSpeak NG speech (transcription only asks about what silero-vad finds to be speech)."""
    return synth.encode_file(spoken(seconds, silences), tmp_path / name)


def test_full_local_pipeline_on_postgres(earshot_env: Settings, tmp_path: Path) -> None:
    src = speech_file(tmp_path, "meeting.mp3", 12.0, [(5.0, 6.0)])
    code, reports = run_cli(str(src), "--tasks", "transcribe,caption,events,summarize,think,speak")
    assert code == 0, reports
    (rep,) = reports
    assert rep["status"] == "succeeded" and rep["error"] is None
    assert rep["source"] == src.resolve().as_uri()
    for key in ("job_id", "segments", "transcript", "summary", "events", "reasoning", "speech_uri"):
        assert key in rep
    segments = rep["segments"]
    assert isinstance(segments, list) and len(segments) == 1
    assert segments[0]["start"] == 0.0 and segments[0]["end"] == pytest.approx(12.0, abs=0.1)
    transcript = rep["transcript"]
    assert isinstance(transcript, list) and transcript
    for u in transcript:
        assert 0.0 <= u["start"] <= u["end"] <= 12.1
    reasoning = rep["reasoning"]
    assert isinstance(reasoning, list) and reasoning[0]["adapter"] is True
    notes = rep["notes"]
    assert isinstance(notes, list)
    assert not any("adapter" in n for n in notes)  # the think adapter was there: nothing to warn about
    grounding = rep["grounding"]
    assert isinstance(grounding, dict) and set(grounding) >= {"events", "events_dropped", "events_merged"}
    assert grounding["events"] == len(rep["events"])  # type: ignore[arg-type]

    speech = storage.parse_uri(str(rep["speech_uri"])).path
    info = sf.info(str(speech))
    assert info.duration > 0.2
    outputs = rep["outputs"]
    assert isinstance(outputs, dict)
    for fmt in ("json", "srt", "vtt", "md", "wav"):
        assert storage.exists(outputs[fmt]), fmt
    srt = storage.read_bytes(outputs["srt"]).decode()
    assert exports.validate_srt(srt) == []
    assert json.loads(storage.read_bytes(outputs["json"]))["job_id"] == rep["job_id"]
    # scratch segments are cleaned up once the job is done
    assert list(storage.list_objects(earshot_env.scratch_url + "/" + str(rep["job_id"]) + "/")) == []

    with session_scope() as s:
        job = s.get(m.Job, rep["job_id"])
        assert job is not None and job.status == "succeeded" and job.progress == 1.0
        assert job.audio_file.sha256 and len(job.audio_file.sha256) == 64
        assert job.audio_file.format == "mp3"
        assert s.scalar(select(func.count()).where(m.Summary.job_id == job.id, m.Summary.level == "file")) == 1


def test_long_file_is_split_and_mapped_to_absolute_time(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.earshot import apply_env

    settings = apply_env(monkeypatch, max_segment_s="10")
    src = speech_file(tmp_path, "long.flac", 26.0, [(8.0, 8.8), (17.5, 18.3)])
    code, (rep,) = run_cli(str(src), "--tasks", "transcribe,summarize")
    assert code == 0
    segs = rep["segments"]
    assert isinstance(segs, list) and len(segs) == 3
    assert segs[0]["start"] == 0.0
    for a, b in itertools.pairwise(segs):
        assert a["end"] == b["start"]
        assert b["end"] - b["start"] <= settings.max_segment_s
    assert 8.0 <= segs[0]["end"] <= 8.8 and 17.5 <= segs[1]["end"] <= 18.3
    assert segs[-1]["end"] == pytest.approx(26.0, abs=0.05)
    # each segment's transcript lands inside that segment on the file's timeline
    with session_scope() as s:
        rows = s.scalars(select(m.Utterance).where(m.Utterance.job_id == rep["job_id"])).all()
        spans = {seg["index"]: (seg["start"], seg["end"]) for seg in segs}
        # every segment holds speech, so every segment asked for a transcript (the tiny model's
        # noise may be empty for a chunk, which then gives no utterance rather than an empty cue)
        job = s.get(m.Job, rep["job_id"])
        assert job is not None
        usage = job.options["segments_usage"]
        assert sorted(usage) == ["0", "1", "2"] and all(u["prompts"] >= 1 for u in usage.values())
        assert len({r.segment_index for r in rows}) >= 2
        for r in rows:
            lo, hi = spans[r.segment_index]
            assert lo - 1e-6 <= r.start_s <= r.end_s <= hi + 1e-6


def _counts(job_id: str) -> dict[str, int]:
    with session_scope() as s:
        return {
            t.__tablename__: int(s.scalar(select(func.count()).select_from(t).where(t.job_id == job_id)) or 0)
            for t in (m.Utterance, m.Event, m.Summary, m.ReasoningTrace, m.SpeechOutput, m.Segment)
        }


def test_rerunning_tasks_writes_the_same_rows_once(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.earshot import apply_env

    settings = apply_env(monkeypatch, max_segment_s="6")
    src = speech_file(tmp_path, "again.wav", 10.0, [(4.5, 5.5)])
    code, (rep,) = run_cli(str(src), "--tasks", "transcribe,events,summarize,think,speak")
    assert code == 0
    job_id = str(rep["job_id"])
    before = _counts(job_id)
    assert before["segments"] == 2 and before["utterances"] > 0

    # a redelivered analyze task and a second finalize (acks_late after a crash)
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        job.status = "running"
        for seg in job.segments:
            seg.status = "pending"
    # scratch was cleaned after success; put the segments back as a redelivery would find them
    from earshot.pipeline.prepare import prepare_job

    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        job.segment_count = None
    assert prepare_job(job_id, settings) == [0, 1]
    engine = get_engine(settings)
    assert analyze_segment(job_id, 0, engine, settings=settings) is False
    assert analyze_segment(job_id, 1, engine, settings=settings) is True
    assert analyze_segment(job_id, 1, engine, settings=settings) is True  # already done: no-op
    assert finalize_job(job_id, engine, settings) is True
    assert _counts(job_id) == before


BAD_INPUTS = {
    "empty.wav": ("empty_file", b""),
    "noise.mp3": ("not_audio", bytes(range(256)) * 40),
    "notes.wav": ("not_audio", b"these are meeting notes, not audio\n" * 20),
}


def test_bad_inputs_fail_cleanly_and_the_good_file_still_runs(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.earshot import apply_env

    files: dict[str, tuple[str, ...]] = {}
    for name, (code_, data) in BAD_INPUTS.items():
        (tmp_path / name).write_bytes(data)
        files[str(tmp_path / name)] = (code_,)
    good = speech_file(tmp_path, "good.mp3", 4.0, [])
    mp3 = speech_file(tmp_path, "whole.mp3", 4.0, [])
    truncated = tmp_path / "truncated.mp3"
    truncated.write_bytes(mp3.read_bytes()[:300])
    files[str(truncated)] = ("corrupt_audio", "not_audio", "zero_duration")
    zero = synth.encode_file(synth.tone_with_silences(0.0), tmp_path / "zero.wav")
    files[str(zero)] = ("zero_duration", "corrupt_audio")
    big = speech_file(tmp_path, "big.wav", 40.0, [])
    files[str(big)] = ("too_large",)
    files[str(tmp_path / "missing.flac")] = ("source_not_found",)
    apply_env(monkeypatch, max_file_bytes=str(good.stat().st_size * 4))
    assert big.stat().st_size > good.stat().st_size * 4

    code, reports = run_cli(*files, str(good), "--tasks", "transcribe")
    assert code == 1
    by_source = {storage.parse_uri(str(r["source"])).key: r for r in reports}
    ok = by_source[str(good.resolve())]
    assert ok["status"] == "succeeded" and ok["transcript"]
    for path, codes in files.items():
        rep = by_source[str(Path(path).resolve())]
        assert rep["status"] == "failed", path
        err = rep["error"]
        assert isinstance(err, dict) and err["code"] in codes, (path, err)
        assert len(str(err["message"])) > 10
        if rep["job_id"]:
            with session_scope() as s:
                job = s.get(m.Job, rep["job_id"])
                assert job is not None and job.status == "failed" and job.finished_at is not None
                assert s.scalar(select(func.count()).where(m.Utterance.job_id == job.id)) == 0


def test_embedded_sqlite_default_runs_the_same_job(sqlite_env: Settings, tmp_path: Path) -> None:
    src = speech_file(tmp_path, "clip.ogg", 5.0, [])
    code, (rep,) = run_cli(str(src), "--tasks", "transcribe,caption,summarize,speak")
    assert code == 0 and rep["status"] == "succeeded"
    assert rep["captions"] and rep["summary"] is not None and rep["speech_uri"]
    result = runner.invoke(app, ["jobs", "list", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout.splitlines()[0])["job_id"] == rep["job_id"]
    shown = runner.invoke(app, ["jobs", "show", str(rep["job_id"]), "--json"])
    assert json.loads(shown.stdout)["transcript"] == rep["transcript"]


def test_thinking_without_an_adapter_says_so(
    sqlite_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from earshot.af3.tiny import build_tiny_checkpoint
    from tests.fixtures.earshot import apply_env

    plain = build_tiny_checkpoint(tmp_path / "plain", with_think=False)
    apply_env(monkeypatch, model_path=str(plain))
    src = speech_file(tmp_path, "q.wav", 3.0, [])
    code, (rep,) = run_cli(str(src), "--tasks", "think")
    assert code == 0 and rep["status"] == "succeeded"
    reasoning = rep["reasoning"]
    assert isinstance(reasoning, list) and reasoning and all(r["adapter"] is False for r in reasoning)
    notes = rep["notes"]
    assert isinstance(notes, list) and len([n for n in notes if "think adapter" in n]) == 1
