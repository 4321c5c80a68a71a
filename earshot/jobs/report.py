"""Assemble a JobReport from rows: what `earshot run --json` and `earshot jobs show` print, and
what the exports (JSON, SRT, WebVTT, Markdown, and the API's Markdown transcript) render. The
API's job and result payloads are serialised from rows by the API itself, not from this.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from earshot.budgets import truncation_note
from earshot.db import models as m
from earshot.results import (
    Chapter,
    ErrorInfo,
    Event,
    JobReport,
    Reasoning,
    SegmentInfo,
    Utterance,
)


def _notes(options: dict[str, Any]) -> list[str]:
    notes: list[str] = []
    for name in ("think", "short_audio"):  # short_audio: decoded far less than the header said
        found = options.get(name)
        if isinstance(found, dict) and found.get("note"):
            notes.append(str(found["note"]))
    cut = truncated_counts(options)
    if cut:
        notes.append(truncation_note(cut))
    return notes


def truncated_counts(options: dict[str, Any]) -> dict[str, int]:
    """Answers cut by their token limit, by task, summed over the job's segments."""
    counts: dict[str, int] = {}
    for usage in (options.get("segments_usage") or {}).values():
        for task, n in (usage.get("truncated") or {}).items() if isinstance(usage, dict) else ():
            counts[task] = counts.get(task, 0) + int(n)
    return counts


def build_report(session: Session, job: m.Job) -> JobReport:
    jid = job.id
    utterances = session.scalars(
        select(m.Utterance)
        .where(m.Utterance.job_id == jid)
        .order_by(m.Utterance.start_s, m.Utterance.segment_index, m.Utterance.seq)
    )
    summaries = list(
        session.scalars(select(m.Summary).where(m.Summary.job_id == jid).order_by(m.Summary.idx))
    )
    events = session.scalars(
        select(m.Event).where(m.Event.job_id == jid).order_by(m.Event.start_s, m.Event.seq)
    )
    traces = session.scalars(
        select(m.ReasoningTrace)
        .where(m.ReasoningTrace.job_id == jid)
        .order_by(m.ReasoningTrace.segment_index, m.ReasoningTrace.seq)
    )
    speech = session.scalar(select(m.SpeechOutput).where(m.SpeechOutput.job_id == jid))
    file_summary = next((s.text for s in summaries if s.level == "file"), None)
    return JobReport(
        job_id=jid,
        source=job.source_uri,
        status=job.status,
        tasks=list(job.tasks),
        duration=job.audio_file.duration_s if job.audio_file else None,
        segments=[
            SegmentInfo(index=s.index, start=s.start_s, end=s.end_s, status=s.status)
            for s in job.segments
        ],
        transcript=[Utterance(start=u.start_s, end=u.end_s, text=u.text) for u in utterances],
        summary=file_summary,
        chapters=[
            Chapter(start=s.start_s, end=s.end_s, title=s.title or "", summary=s.text)
            for s in summaries
            if s.level == "chapter"
        ],
        captions=[s.text for s in summaries if s.level == "caption"],
        events=[Event(start=e.start_s, end=e.end_s, label=e.label, raw=e.raw or "") for e in events],
        reasoning=[
            Reasoning(question=t.question, thinking=t.thinking, answer=t.answer, adapter=t.adapter)
            for t in traces
        ],
        speech_uri=speech.uri if speech else None,
        outputs=dict(job.options.get("outputs", {})),
        grounding={k: int(v) for k, v in (job.options.get("grounding") or {}).items() if isinstance(v, int | float)},
        notes=_notes(job.options),
        error=ErrorInfo(code=job.error_code, message=job.error_message or "")
        if job.error_code
        else None,
    )
