"""A real job on the tiny AF3, cut into several segments: sections -> summary + chapters + speech.

The call-count and context-budget properties of the reduce for three hours are tested in
tests/unit/test_reduce.py with a counting fake; here the same code runs for real, end to end,
on a few minutes of audio with a small EARSHOT_MAX_SEGMENT_S.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import select
from typer.testing import CliRunner

from earshot import prompts, storage
from earshot.af3.chat import Turn
from earshot.audio import synth
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.engines import get_engine
from earshot.engines.base import Ask, Engine, Generation
from earshot.pipeline import finalize_job
from earshot.reduce import call_bound
from earshot.speech import Speech
from services.cli.main import app

SECONDS = 40.0
QUESTION = "When does the alarm start?"


class ScriptedEvents:
    """The tiny model for everything, except a scripted events answer per segment.

    Random weights never produce a parseable timeline, so the events answer is written here:
    "rain" over the whole segment (it must come out as one event across every cut), a
    "siren" inside the first segment, and two invalid lines per segment to be dropped.
    """

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.name = inner.name
        self.segments = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def has_think_adapter(self) -> bool:
        return self.inner.has_think_adapter

    def generate(self, asks: Sequence[Ask], *, audios: Sequence[np.ndarray] = (), **kw: Any) -> list[Generation]:
        rest = [a for a in asks if a.prompt != prompts.EVENTS]
        answers = iter(self.inner.generate(rest, audios=audios, **kw) if rest else [])
        return [
            self._events(audios[a.audio] if a.audio is not None else None) if a.prompt == prompts.EVENTS else next(answers)
            for a in asks
        ]

    def _events(self, audio: np.ndarray | None) -> Generation:
        assert audio is not None
        self.segments += 1
        dur = audio.shape[0] / 16000
        lines = [f"[0.0 - {dur:.2f}] Rain", f"[{dur - 1:.1f} - {dur + 60:.1f}] too long", "[5 - 2] reversed"]
        if self.segments == 1:
            lines.insert(1, "[3.0 - 6.0] siren")
        return Generation("\n".join(lines), "eos", 0, len(lines) * 8)

    def chat(self, turns: Sequence[Turn], clips: Sequence[np.ndarray], **kw: Any) -> Generation:
        return self.inner.chat(turns, clips, **kw)

    def chat_stream(self, turns: Sequence[Turn], clips: Sequence[np.ndarray], **kw: Any) -> Iterator[str]:
        return self.inner.chat_stream(turns, clips, **kw)

    def speak(self, text: str) -> Speech:
        return self.inner.speak(text)


def test_several_segments_to_summary_chapters_and_speech(
    earshot_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.earshot import apply_env

    settings = apply_env(monkeypatch, max_segment_s="10", chapter_target_s="20", reduce_budget_chars="3000")
    engine = ScriptedEvents(get_engine(settings))
    monkeypatch.setattr("workers.tasks.get_engine", lambda *a, **k: engine)
    quiet = [(t, t + 0.6) for t in (9.0, 18.5, 28.0)]
    src = synth.encode_file(synth.tone_with_silences(SECONDS, quiet), tmp_path / "lecture.flac")

    result = CliRunner().invoke(
        app, ["run", "--json", str(src), "--tasks", "events,summarize,think,speak", "-q", QUESTION]
    )
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.exit_code == 0, result.output
    (rep,) = reports
    assert rep["status"] == "succeeded"
    segments = rep["segments"]
    n = len(segments)
    assert n >= 3 and engine.segments == n
    assert segments[-1]["end"] == pytest.approx(SECONDS, abs=0.05)

    # one summary, chapters with start times (one per ~20 s: 2), each titled
    assert rep["summary"]
    chapters = rep["chapters"]
    assert len(chapters) == 2
    assert chapters[0]["start"] == 0.0 and chapters[-1]["end"] == pytest.approx(SECONDS, abs=0.05)
    assert chapters[0]["end"] == chapters[1]["start"]
    assert chapters[1]["start"] in {s["start"] for s in segments}
    assert all(c["title"] for c in chapters)

    # the spoken summary
    speech = storage.parse_uri(rep["speech_uri"]).path
    assert sf.info(str(speech)).duration > 0.2

    # grounding: rain cut at every segment boundary comes back as one event; drops counted
    labels = sorted((e["label"], e["start"], e["end"]) for e in rep["events"])
    rain = [e for e in labels if e[0] == "Rain"]
    assert len(rain) == 1 and rain[0][1] == 0.0 and rain[0][2] == pytest.approx(SECONDS, abs=0.05)
    assert ("siren", 3.0, 6.0) in labels and len(labels) == 2

    with session_scope() as s:
        job = s.get(m.Job, rep["job_id"])
        assert job is not None
        assert job.options["grounding"] == {"events_merged": n - 1, "events_dropped": 2 * n, "events": 2}
        assert job.options["think"] == {"adapter": True}
        calls = job.timings["reduce_llm_calls"]
        assert 0 < calls <= call_bound(n, max_chapters=settings.max_chapters) + call_bound(n, max_chapters=1)
        sections = list(s.scalars(select(m.Summary).where(m.Summary.job_id == job.id, m.Summary.level == "section")))
        assert len(sections) == 2 and all(sec.text for sec in sections)
        answers = list(s.scalars(select(m.ReasoningTrace).where(m.ReasoningTrace.job_id == job.id, m.ReasoningTrace.question == QUESTION)))
        assert sorted(a.segment_index for a in answers) == [-1, *range(n)]
        raw = job.segments[0].raw["events"]
        assert "too long" in raw  # the model's words are kept even when a line is dropped
        job_id = job.id

    # finalize again (a redelivered task): same rows, same counts
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        job.status = "running"
    assert finalize_job(job_id, engine, settings) is True
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        assert job.options["grounding"]["events_merged"] == n - 1
        assert len(list(s.scalars(select(m.Event).where(m.Event.job_id == job_id)))) == 2
        assert len(list(s.scalars(select(m.Summary).where(m.Summary.job_id == job_id, m.Summary.level == "chapter")))) == 2
