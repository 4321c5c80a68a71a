"""Idempotent result writes: rows are replaced per (job, segment), so a rerun writes them once."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from earshot.analysis import SegmentAnalysis
from earshot.db import models as m
from earshot.reduce import Passage
from earshot.results import Chapter


def save_segment_results(
    session: Session, *, job_id: str, segment_index: int, analysis: SegmentAnalysis
) -> None:
    """Store one segment's results, already on the file's timeline."""
    for table in (m.Utterance, m.Event, m.ReasoningTrace):
        session.execute(
            delete(table).where(table.job_id == job_id, table.segment_index == segment_index)
        )
    session.execute(
        delete(m.Summary).where(
            m.Summary.job_id == job_id,
            m.Summary.level.in_(("segment", "caption")),
            m.Summary.idx == segment_index,
        )
    )
    start = min((u.start for u in analysis.transcript), default=0.0)
    session.add_all(
        m.Utterance(
            job_id=job_id, segment_index=segment_index, seq=i, start_s=u.start, end_s=u.end, text=u.text
        )
        for i, u in enumerate(analysis.transcript)
    )
    session.add_all(
        m.Event(
            job_id=job_id,
            segment_index=segment_index,
            seq=i,
            label=e.label,
            start_s=e.start,
            end_s=e.end,
            raw=e.raw,
        )
        for i, e in enumerate(analysis.events)
    )
    session.add_all(
        m.ReasoningTrace(
            job_id=job_id,
            segment_index=segment_index,
            seq=i,
            question=r.question,
            thinking=r.thinking,
            answer=r.answer,
            adapter=r.adapter,
        )
        for i, r in enumerate(analysis.reasoning)
    )
    seg = session.scalar(
        select(m.Segment).where(m.Segment.job_id == job_id, m.Segment.index == segment_index)
    )
    seg_start = seg.start_s if seg else start
    seg_end = seg.end_s if seg else start + analysis.duration_s
    if analysis.summary is not None:
        session.add(
            m.Summary(
                job_id=job_id, level="segment", idx=segment_index, start_s=seg_start, end_s=seg_end,
                text=analysis.summary, raw=analysis.raw.get("summarize"),
            )
        )
    if analysis.caption is not None:
        session.add(
            m.Summary(
                job_id=job_id, level="caption", idx=segment_index, start_s=seg_start, end_s=seg_end,
                text=analysis.caption, raw=analysis.raw.get("caption"),
            )
        )


def save_file_summary(
    session: Session,
    *,
    job_id: str,
    summary: str,
    duration_s: float,
    sections: Sequence[Passage] = (),
    chapters: Sequence[Chapter] = (),
) -> None:
    session.execute(
        delete(m.Summary).where(
            m.Summary.job_id == job_id, m.Summary.level.in_(("file", "section", "chapter"))
        )
    )
    session.add(m.Summary(job_id=job_id, level="file", idx=0, start_s=0.0, end_s=duration_s, text=summary))
    session.add_all(
        m.Summary(job_id=job_id, level="section", idx=i, start_s=p.start, end_s=p.end, text=p.text)
        for i, p in enumerate(sections)
    )
    session.add_all(
        m.Summary(
            job_id=job_id, level="chapter", idx=i, start_s=c.start, end_s=c.end, title=c.title, text=c.summary
        )
        for i, c in enumerate(chapters)
    )


def save_file_reasoning(session: Session, *, job_id: str, items: Sequence[tuple[str, str]]) -> None:
    """File-level answers to custom questions (segment_index -1)."""
    session.execute(
        delete(m.ReasoningTrace).where(
            m.ReasoningTrace.job_id == job_id, m.ReasoningTrace.segment_index == -1
        )
    )
    session.add_all(
        m.ReasoningTrace(job_id=job_id, segment_index=-1, seq=i, question=q, thinking="", answer=a)
        for i, (q, a) in enumerate(items)
    )


def save_speech(
    session: Session, *, job_id: str, uri: str, duration_s: float, voice: str, sample_rate: int
) -> None:
    session.execute(
        delete(m.SpeechOutput).where(m.SpeechOutput.job_id == job_id, m.SpeechOutput.kind == "summary")
    )
    session.add(
        m.SpeechOutput(
            job_id=job_id, kind="summary", uri=uri, duration_s=duration_s, voice=voice, sample_rate=sample_rate
        )
    )
