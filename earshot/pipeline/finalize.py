"""Step 3: merge, reduce, answer, speak, export; the job turns succeeded only after all of it."""

from __future__ import annotations

import logging
import time
from pathlib import PurePosixPath

from sqlalchemy import func, select

from earshot import exports, prompts, storage
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.base import utcnow
from earshot.db.session import session_scope
from earshot.engines.base import Engine
from earshot.jobs.report import build_report
from earshot.jobs.store import merge_cut_events, save_file_reasoning, save_file_summary, save_speech
from earshot.pipeline.prepare import scratch_prefix
from earshot.reduce import Passage, reduce_summaries, summarize_recording

log = logging.getLogger("earshot.finalize")
EXPORT_FORMATS = ("json", "srt", "vtt", "md")


def output_location(settings: Settings, job: m.Job) -> tuple[str, str]:
    """(prefix, stem): results go to ``<prefix>/<stem>.<ext>``."""
    prefix = job.output_prefix or storage.join_uri(settings.output_url, job.id)
    stem = str(job.options.get("output_stem") or PurePosixPath(storage.parse_uri(job.source_uri).key).stem)
    return prefix, stem or job.id


def finalize_job(job_id: str, engine: Engine, settings: Settings) -> bool:
    """Finish a job whose segments are all analyzed. Returns True if it is now succeeded."""
    t0 = time.monotonic()
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        if job is None or job.status in m.TERMINAL_STATUSES:
            return False
        pending = s.scalar(
            select(func.count()).where(m.Segment.job_id == job_id, m.Segment.status != "done")
        )
        if pending or not job.segment_count:
            return False
        tasks, questions = list(job.tasks), list(job.questions)
        duration = job.segments[-1].end_s
        parts = [
            Passage(start=r.start_s, end=r.end_s, text=r.text)
            for r in s.scalars(
                select(m.Summary)
                .where(m.Summary.job_id == job_id, m.Summary.level == "segment")
                .order_by(m.Summary.idx)
            )
        ]
        captions = [
            r.text
            for r in s.scalars(
                select(m.Summary)
                .where(m.Summary.job_id == job_id, m.Summary.level == "caption")
                .order_by(m.Summary.idx)
            )
        ]
        answers = list(
            s.scalars(
                select(m.ReasoningTrace)
                .where(m.ReasoningTrace.job_id == job_id, m.ReasoningTrace.segment_index >= 0)
                .order_by(m.ReasoningTrace.segment_index, m.ReasoningTrace.seq)
            )
        )
        segment_spans = {seg.index: (seg.start_s, seg.end_s) for seg in job.segments}
        prefix, stem = output_location(settings, job)

    def complete(prompt: str) -> str:
        return engine.generate([prompt], max_new_tokens=settings.summary_max_new_tokens)[0]

    notes: dict[str, object] = {}
    with session_scope() as s:
        # events cut in two by a segment boundary become one; dropped lines are counted
        grounding = merge_cut_events(s, job_id=job_id)
        job = s.get(m.Job, job_id)
        assert job is not None
        previous = job.options.get("grounding") or {}
        grounding["events_merged"] += int(previous.get("events_merged", 0))
        notes["grounding"] = grounding
        if "think" in tasks:
            from earshot.af3.think import NO_ADAPTER_NOTE

            notes["think"] = (
                {"adapter": True}
                if engine.has_think_adapter
                else {"adapter": False, "note": NO_ADAPTER_NOTE}
            )
        job.options = {**job.options, **notes}

    summary = ""
    llm_calls = 0
    if "summarize" in tasks and parts:
        # segment summaries -> titled sections (chapters) -> one file summary, each call in budget
        reduced = summarize_recording(
            parts,
            complete,
            duration_s=duration,
            budget_chars=settings.reduce_budget_chars,
            chapter_target_s=settings.chapter_target_s,
            max_chapters=settings.max_chapters,
        )
        summary = reduced.summary
        llm_calls += reduced.calls
        with session_scope() as s:
            save_file_summary(
                s, job_id=job_id, summary=summary, duration_s=duration,
                sections=reduced.sections, chapters=reduced.chapters,
            )

    file_answers: list[tuple[str, str]] = []
    for q in questions:
        q_parts = [
            Passage(
                start=segment_spans[a.segment_index][0],
                end=segment_spans[a.segment_index][1],
                text=a.answer,
            )
            for a in answers
            if a.question == q and a.segment_index in segment_spans
        ]
        template = prompts.REDUCE_ANSWERS.replace("{question}", q.replace("{", "(").replace("}", ")"))
        r = reduce_summaries(q_parts, complete, budget_chars=settings.reduce_budget_chars, template=template)
        llm_calls += r.calls
        file_answers.append((q, r.summary))
    if file_answers:
        with session_scope() as s:
            save_file_reasoning(s, job_id=job_id, items=file_answers)

    outputs: dict[str, str] = {}
    if "speak" in tasks:
        text = summary or " ".join(captions) or "The recording was processed."
        speech = engine.speak(text)
        wav_uri = storage.join_uri(prefix, f"{stem}.wav")
        storage.put_bytes(wav_uri, speech.wav, content_type="audio/wav")
        outputs["wav"] = wav_uri
        with session_scope() as s:
            save_speech(
                s, job_id=job_id, uri=wav_uri, duration_s=speech.duration_s, voice=speech.voice,
                sample_rate=speech.sample_rate,
            )

    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        for fmt in EXPORT_FORMATS:
            outputs[fmt] = storage.join_uri(prefix, f"{stem}{exports.FORMATS[fmt].extension}")
        job.options = {**job.options, "outputs": outputs}
        s.flush()
        report = build_report(s, job)
    report.status = "succeeded"
    for fmt in EXPORT_FORMATS:
        spec = exports.FORMATS[fmt]
        storage.put_bytes(outputs[fmt], spec.render(report).encode(), content_type=spec.content_type)

    with session_scope() as s:
        job = s.get(m.Job, job_id, with_for_update=True)
        if job is None or job.status in m.TERMINAL_STATUSES:
            return False
        job.status = "succeeded"
        job.progress = 1.0
        job.finished_at = utcnow()
        job.model_id = engine.model_id
        job.timings = {
            **job.timings, "finalize_s": round(time.monotonic() - t0, 3), "reduce_llm_calls": llm_calls,
        }
    try:
        storage.delete_prefix(scratch_prefix(settings, job_id) + "/")
    except Exception:  # scratch is disposable; a leftover must not fail a finished job
        log.warning("could not delete scratch of job %s", job_id, exc_info=True)
    return True
