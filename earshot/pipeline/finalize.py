"""Step 3: merge events, summarize, answer, speak, export, complete.

Each step is idempotent (rows are replaced, files overwritten), so a redelivered
``finalize_job`` may run them again. The job turns ``succeeded`` only in :func:`complete`,
the last step, in the same transaction as its callback row (the outbox); scratch cleanup and
the callback hand-off happen afterwards from the database (``earshot.jobs.watchdog.
settle_job``), so a worker lost right after the commit loses nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select

from earshot import exports, prompts, storage
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.engines.base import Ask, Engine, texts
from earshot.grounding import merge_cut_events
from earshot.jobs.outputs import OutputPlan, output_plan
from earshot.jobs.report import build_report
from earshot.jobs.service import active_job, finish_job, pinned_version
from earshot.jobs.store import save_file_reasoning, save_file_summary, save_speech
from earshot.reduce import Passage, reduce_summaries, summarize_recording

log = logging.getLogger("earshot.finalize")
EXPORT_FORMATS = ("json", "srt", "vtt", "md")


@dataclass
class FinalizeInput:
    """What the steps read from the job's rows, loaded once."""

    job_id: str
    source_uri: str
    tasks: list[str]
    questions: list[str]
    duration: float
    parts: list[Passage]
    captions: list[str]
    answers: dict[str, list[Passage]]
    plan: OutputPlan
    pinned: storage.ObjectInfo
    llm_calls: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    latest: dict[str, str] = field(default_factory=dict)


def load(job_id: str, settings: Settings) -> FinalizeInput | None:
    """None if the job is terminal or has segments still to analyze."""
    with session_scope(settings.database_url) as s:
        job = active_job(s, job_id)
        if job is None or not job.segment_count:
            return None
        pending = s.scalar(
            select(func.count()).where(m.Segment.job_id == job_id, m.Segment.status != "done")
        )
        if pending:
            return None
        summaries = list(
            s.scalars(
                select(m.Summary)
                .where(m.Summary.job_id == job_id, m.Summary.level.in_(("segment", "caption")))
                .order_by(m.Summary.idx)
            )
        )
        spans = {seg.index: (seg.start_s, seg.end_s) for seg in job.segments}
        answers: dict[str, list[Passage]] = {}
        for a in s.scalars(
            select(m.ReasoningTrace)
            .where(m.ReasoningTrace.job_id == job_id, m.ReasoningTrace.segment_index >= 0)
            .order_by(m.ReasoningTrace.segment_index, m.ReasoningTrace.seq)
        ):
            if a.segment_index in spans:
                start, end = spans[a.segment_index]
                answers.setdefault(a.question, []).append(Passage(start=start, end=end, text=a.answer))
        return FinalizeInput(
            job_id=job_id,
            source_uri=job.source_uri,
            tasks=list(job.tasks),
            questions=list(job.questions),
            duration=job.segments[-1].end_s,
            parts=[Passage(start=r.start_s, end=r.end_s, text=r.text) for r in summaries if r.level == "segment"],
            captions=[r.text for r in summaries if r.level == "caption"],
            answers=answers,
            plan=output_plan(settings, job),
            pinned=pinned_version(job.audio_file),
        )


def merge_events(job: FinalizeInput, engine: Engine, settings: Settings) -> None:
    """Events cut in two by a segment boundary become one; notes on grounding and thinking."""
    with session_scope(settings.database_url) as s:
        grounding = merge_cut_events(s, job_id=job.job_id)
        row = s.get(m.Job, job.job_id)
        assert row is not None
        previous = row.options.get("grounding") or {}
        grounding["events_merged"] += int(previous.get("events_merged", 0))
        notes: dict[str, object] = {"grounding": grounding}
        if "think" in job.tasks:
            from earshot.analysis import NO_ADAPTER_NOTE

            notes["think"] = (
                {"adapter": True}
                if engine.has_think_adapter
                else {"adapter": False, "note": NO_ADAPTER_NOTE}
            )
        row.options = {**row.options, **notes}


def _completer(job: FinalizeInput, engine: Engine, settings: Settings) -> Callable[[str], str]:
    def complete(prompt: str) -> str:
        job.llm_calls += 1
        asks = [Ask(prompt, max_new_tokens=settings.summary_max_new_tokens)]
        return texts(engine.generate(asks))[0]

    return complete


def summarize(job: FinalizeInput, engine: Engine, settings: Settings) -> str:
    """Segment summaries -> titled sections (chapters) -> one file summary, each call in budget."""
    if "summarize" not in job.tasks or not job.parts:
        return ""
    reduced = summarize_recording(
        job.parts,
        _completer(job, engine, settings),
        duration_s=job.duration,
        budget_chars=settings.reduce_budget_chars,
        chapter_target_s=settings.chapter_target_s,
        max_chapters=settings.max_chapters,
    )
    with session_scope(settings.database_url) as s:
        save_file_summary(
            s, job_id=job.job_id, summary=reduced.summary, duration_s=job.duration,
            sections=reduced.sections, chapters=reduced.chapters,
        )
    return reduced.summary


def answer(job: FinalizeInput, engine: Engine, settings: Settings) -> None:
    """Each custom question: the segments' answers reduced to one."""
    file_answers: list[tuple[str, str]] = []
    for q in job.questions:
        template = prompts.REDUCE_ANSWERS.replace("{question}", q.replace("{", "(").replace("}", ")"))
        r = reduce_summaries(
            job.answers.get(q, []), _completer(job, engine, settings),
            budget_chars=settings.reduce_budget_chars, template=template,
        )
        file_answers.append((q, r.summary))
    if file_answers:
        with session_scope(settings.database_url) as s:
            save_file_reasoning(s, job_id=job.job_id, items=file_answers)


def _is_current(job: FinalizeInput, settings: Settings) -> bool:
    """Is the job's version still the object's current one? Only then is "latest" written."""
    try:
        now = storage.head(job.pinned.uri, settings=settings)
    except storage.NotFound:
        return False
    return now.version == job.pinned.version


def _put(
    job: FinalizeInput, name: str, ext: str, data: bytes, content_type: str, *, latest: bool, settings: Settings
) -> None:
    uri = job.plan.uri(ext)
    storage.put_bytes(uri, data, content_type=content_type, settings=settings)
    job.outputs[name] = uri
    latest_uri = job.plan.latest_uri(ext)
    if latest and latest_uri is not None:
        storage.put_bytes(latest_uri, data, content_type=content_type, settings=settings)
        job.latest[name] = latest_uri


def speak(job: FinalizeInput, engine: Engine, settings: Settings, summary: str) -> None:
    if "speak" not in job.tasks:
        return
    text = summary or " ".join(job.captions) or "The recording was processed."
    speech = engine.speak(text)
    _put(job, "wav", ".wav", speech.wav, "audio/wav", latest=_is_current(job, settings), settings=settings)
    with session_scope(settings.database_url) as s:
        save_speech(
            s, job_id=job.job_id, uri=job.outputs["wav"], duration_s=speech.duration_s,
            voice=speech.voice, sample_rate=speech.sample_rate,
        )


def export(job: FinalizeInput, settings: Settings) -> None:
    """JSON/SRT/VTT/MD of the report as it will read once the job succeeded."""
    for fmt in EXPORT_FORMATS:
        job.outputs[fmt] = job.plan.uri(exports.FORMATS[fmt].extension)
    with session_scope(settings.database_url) as s:
        row = s.get(m.Job, job.job_id)
        assert row is not None
        row.options = {**row.options, "outputs": job.outputs}
        s.flush()
        report = build_report(s, row)
    report.status = "succeeded"
    latest = _is_current(job, settings)
    for fmt in EXPORT_FORMATS:
        spec = exports.FORMATS[fmt]
        _put(job, fmt, spec.extension, spec.render(report).encode(), spec.content_type, latest=latest, settings=settings)


def complete(job: FinalizeInput, engine: Engine, settings: Settings, started: float) -> bool:
    """The job succeeds, and its callback joins the outbox, in one transaction."""
    with session_scope(settings.database_url) as s:
        row = s.get(m.Job, job.job_id)
        timings = dict(row.timings) if row is not None else {}
        options = dict(row.options) if row is not None else {}
        if job.latest:
            options["latest_outputs"] = job.latest
        done = finish_job(
            s, job.job_id, "succeeded", settings=settings,
            updates={
                "progress": 1.0,
                "model_id": engine.model_id,
                "options": options,
                "timings": {
                    **timings, "finalize_s": round(time.monotonic() - started, 3),
                    "reduce_llm_calls": job.llm_calls,
                },
            },
        )
    return done is not None


def finalize_job(job_id: str, engine: Engine, settings: Settings) -> bool:
    """Finish a job whose segments are all analyzed. Returns True if it is now succeeded."""
    started = time.monotonic()
    job = load(job_id, settings)
    if job is None:
        return False
    merge_events(job, engine, settings)
    summary = summarize(job, engine, settings)
    answer(job, engine, settings)
    speak(job, engine, settings, summary)
    export(job, settings)
    return complete(job, engine, settings, started)
