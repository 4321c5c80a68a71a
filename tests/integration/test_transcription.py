"""Transcription the way AF3 was trained: one "Transcribe the input speech." per speech chunk.

Real speech (eSpeak NG) with pauses of known length, the tiny checkpoint with the real
layout, and the real silero-vad: utterances follow the speech chunks, silence costs no model
call, an answer cut by its budget is said so in the report and counted in the metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest
from typer.testing import CliRunner

from earshot import exports, prompts
from earshot.analysis import analyze_audio
from earshot.audio.vad import speech_chunks
from earshot.config import Settings
from earshot.engines.base import Ask, Generation
from earshot.engines.local import LocalEngine
from earshot.sentences import place_sentences
from services.cli.main import app
from tests.fixtures.speech import SENTENCES, speech_track, spoken

EDGE_S = 0.3


class Recording(LocalEngine):
    """The real local engine, with every call it receives written down."""

    def __init__(self, inner: LocalEngine) -> None:
        super().__init__(inner.runtime, inner.settings, model_id=inner.model_id)
        self.calls: list[tuple[list[Ask], list[np.ndarray]]] = []
        self.answers: list[Generation] = []

    def generate(self, asks: Sequence[Ask], *, audios: Sequence[np.ndarray] = (), temperature: float = 0.0) -> list[Generation]:
        self.calls.append((list(asks), list(audios)))
        answers = super().generate(asks, audios=audios, temperature=temperature)
        self.answers.extend(answers)
        return answers


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path) -> tuple[LocalEngine, Settings]:
    settings = Settings(model_path=str(tiny_model_dir), max_new_tokens=24, device="cpu")
    return LocalEngine.from_settings(settings), settings


def test_one_utterance_per_speech_chunk_and_one_subtitle_cue_each(local: tuple[LocalEngine, Settings]) -> None:
    engine, settings = local
    track = speech_track([1.0, SENTENCES[0], 5.0, SENTENCES[1], 0.6, SENTENCES[2], 6.0, SENTENCES[3], 1.0])
    spy = Recording(engine)
    result = analyze_audio(spy, track.samples, tasks=["transcribe"], settings=settings)

    chunks = speech_chunks(track.samples)
    speech = [track.edges[0], (track.edges[1][0], track.edges[2][1]), track.edges[3]]
    assert len(chunks) == 3
    for chunk, (start, end) in zip(chunks, speech, strict=True):
        assert abs(chunk.start - start) <= EDGE_S and abs(chunk.end - end) <= EDGE_S
        assert chunk.duration_s <= 30.0
    # one utterance per sentence of each chunk's answer, inside the chunk, in order; a chunk the
    # model found no words in (the tiny model's noise can be empty) gives none, not an empty cue
    placed = [
        (c, place_sentences(c, prompts.strip_transcript(g.text))) for c, g in zip(chunks, spy.answers, strict=True)
    ]
    assert sum(1 for _, cues in placed if cues) >= 2
    assert [(u.start, u.end, u.text) for u in result.transcript] == [cue for _, cues in placed for cue in cues]
    for chunk, cues in placed:
        for start, end, text in cues:
            assert chunk.start <= start <= end <= chunk.end and text
        if cues:
            assert cues[0][0] == chunk.start and cues[-1][1] == chunk.end
    # all chunks went to the engine in ONE call, each with AF3's trained prompt
    ((asks, audios),) = spy.calls
    assert [a.prompt for a in asks] == [prompts.TRANSCRIBE] * 3
    assert [a.audio for a in asks] == [0, 1, 2]
    assert [round(a.shape[0] / 16000, 2) for a in audios] == [round(c.duration_s, 2) for c in chunks]

    srt, vtt = exports.to_srt(result.transcript), exports.to_vtt(result.transcript)
    assert exports.validate_srt(srt) == [] and exports.validate_vtt(vtt) == []
    n = len(result.transcript)
    assert len(re.findall(r"-->", srt)) == n and len(re.findall(r"-->", vtt)) == n


def test_the_answer_framing_is_stripped_like_the_processor_does() -> None:
    assert prompts.strip_transcript('The spoken content of the audio is "Hello there, world."') == "Hello there, world."
    assert prompts.strip_transcript("The transcription of the audio is 'ok'.") == "ok"
    assert prompts.strip_transcript("  plain words.  ") == "plain words"
    assert prompts.strip_transcript("") == ""


def test_a_half_silent_long_file_asks_the_model_only_about_speech(local: tuple[LocalEngine, Settings]) -> None:
    engine, settings = local
    spy = Recording(engine)
    segments = [spoken(30.0), np.zeros(16000 * 30, np.float32), spoken(30.0, [(10.0, 30.0)]), np.zeros(16000 * 30, np.float32)]
    results = [analyze_audio(spy, seg, tasks=["transcribe"], settings=settings) for seg in segments]
    assert [r.calls for r in results] == [1, 0, 1, 0]  # silence: no model call at all
    assert len(spy.calls) == 2
    heard = [sum(a.shape[0] for a in audios) / 16000 for _, audios in spy.calls]
    assert all(a.shape[0] <= 30 * 16000 for _, audios in spy.calls for a in audios)
    assert all(a.prompt == prompts.TRANSCRIBE for asks, _ in spy.calls for a in asks)
    # what the model hears is the speech (pauses inside chunks included), never the silence:
    # the third segment speaks for its first 10 s only
    assert 25.0 <= heard[0] <= 30.0
    assert 8.0 <= heard[1] <= 10.0 + EDGE_S
    # captions (and the other segment tasks) still ask about the whole segment, speech or not
    silent = analyze_audio(spy, segments[1], tasks=["transcribe", "caption"], settings=settings)
    asks, audios = spy.calls[-1]
    assert silent.calls == 1 and [a.prompt for a in asks] == [prompts.CAPTION] and audios[0].shape[0] == 16000 * 30


def _metric(name: str, task: str) -> float:
    return REGISTRY.get_sample_value(name, {"task": task}) or 0.0


def test_a_budget_too_small_shows_as_truncated_in_the_report_and_the_metric(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from earshot.audio import synth
    from tests.fixtures.earshot import apply_env

    apply_env(monkeypatch, max_new_tokens="1")  # one token: an answer ends at once or is cut
    src = synth.encode_file(spoken(12.0, [(3.0, 7.0)]), tmp_path / "talk.flac")
    tasks = ("transcribe", "caption")
    cut = "earshot_generation_truncated_total"
    before = {t: (_metric(cut, t), _metric("earshot_generations_total", t)) for t in tasks}
    result = CliRunner().invoke(app, ["run", "--json", str(src), "--tasks", ",".join(tasks)])
    (rep,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert rep["status"] == "succeeded", result.output
    notes = [n for n in rep["notes"] if "token limit" in n]
    assert len(notes) == 1, rep["notes"]
    in_report = {task: int(n) for task, n in re.findall(r"(\w+) x(\d+)", notes[0])}
    in_metric = {t: int(_metric(cut, t) - before[t][0]) for t in tasks}
    asked = {t: int(_metric("earshot_generations_total", t) - before[t][1]) for t in tasks}
    assert sum(in_report.values()) >= 1
    assert {t: in_report.get(t, 0) for t in tasks} == in_metric  # the report and /metrics agree
    assert asked["caption"] == 1 and asked["transcribe"] >= 2  # two speech chunks around the pause
    assert all(in_metric[t] <= asked[t] for t in tasks)
    # what `earshot worker --metrics-port` serves on /metrics
    import socket

    import httpx

    from services.cli.admin import serve_metrics

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server, _ = serve_metrics(port)
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        server.shutdown()  # type: ignore[attr-defined]
    line = f'{cut}{{task="caption"}} {_metric(cut, "caption")}'
    assert line in body
    assert cut.encode() in generate_latest(REGISTRY)


def test_a_long_half_silent_file_through_the_pipeline_calls_the_model_only_for_speech(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from earshot.audio import synth
    from earshot.db import models as m
    from earshot.db.session import session_scope
    from tests.fixtures.earshot import apply_env

    settings = apply_env(monkeypatch, max_segment_s="60")
    silence = np.zeros(60 * 16000, np.float32)
    audio = np.concatenate([spoken(60.0), silence, spoken(60.0), silence])  # 4 min, half silence
    src = synth.encode_file(audio, tmp_path / "half.flac")
    result = CliRunner().invoke(app, ["run", "--json", str(src), "--tasks", "transcribe"])
    (rep,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert rep["status"] == "succeeded", result.output
    speech = [(0.0, 60.0), (120.0, 180.0)]
    with session_scope(settings.database_url) as s:
        job = s.get(m.Job, rep["job_id"])
        assert job is not None
        usage = job.options["segments_usage"]
        spans = {seg.index: (seg.start_s, seg.end_s) for seg in job.segments}
    assert len(spans) >= 4
    silent_segments = 0
    for index, (start, end) in spans.items():
        heard = sum(max(0.0, min(end, b) - max(start, a)) for a, b in speech)
        calls = usage[str(index)]["calls"]
        if heard == 0.0:  # nothing but silence: no model call at all
            assert calls == 0, (index, start, end, usage)
            silent_segments += 1
        elif heard >= 10.0:
            assert calls == 1, (index, start, end, usage)
    assert silent_segments >= 1
    # the model heard the two minutes of speech (pauses between sentences included), not the
    # two minutes of silence
    transcribed = sum(u["transcribed_s"] for u in usage.values())
    assert 100.0 <= transcribed <= 120.0 + 2 * EDGE_S * len(spans), usage
    for u in rep["transcript"]:  # every utterance lies in speech
        assert any(a - EDGE_S <= u["start"] and u["end"] <= b + EDGE_S for a, b in speech), u
