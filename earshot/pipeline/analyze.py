"""Step 2: one segment through the engine; results replace that segment's rows."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from sqlalchemy import func, select

from earshot import storage
from earshot.analysis import analyze_audio
from earshot.audio import read_audio
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.engines.base import Engine
from earshot.jobs.service import active_job
from earshot.jobs.store import save_segment_results


def analyze_segment(job_id: str, index: int, engine: Engine, *, settings: Settings) -> bool:
    """Analyze one segment. Returns True when every segment of the job is done."""
    t0 = time.monotonic()
    with session_scope(settings.database_url) as s:
        job = active_job(s, job_id)
        if job is None:
            return False
        seg = s.scalar(select(m.Segment).where(m.Segment.job_id == job_id, m.Segment.index == index))
        if seg is None or seg.scratch_uri is None:
            return False
        if seg.status == "done":
            return _all_done(job_id, settings)
        seg.status = "running"
        seg.attempts += 1
        tasks, questions = list(job.tasks), list(job.questions)
        uri, start = seg.scratch_uri, seg.start_s

    with tempfile.TemporaryDirectory(prefix="earshot-") as tmp:
        local = Path(tmp) / "segment.flac"
        storage.download_to(uri, local, settings=settings)
        samples, _ = read_audio(local)
    analysis = analyze_audio(
        engine, samples, tasks=tasks, questions=questions, settings=settings
    ).shifted(start)

    with session_scope(settings.database_url) as s:
        # row lock: segments finishing together must not lose each other's counts
        job = active_job(s, job_id, lock=True)
        if job is None:
            return False
        save_segment_results(s, job_id=job_id, segment_index=index, analysis=analysis)
        seg = s.scalar(select(m.Segment).where(m.Segment.job_id == job_id, m.Segment.index == index))
        assert seg is not None
        seg.status = "done"
        seg.raw = analysis.raw
        seg.error_message = None
        s.flush()
        done = s.scalar(
            select(func.count()).where(m.Segment.job_id == job_id, m.Segment.status == "done")
        ) or 0
        total = job.segment_count or 1
        job.progress = round(0.05 + 0.85 * done / total, 4)
        job.timings = {**job.timings, f"segment_{index}_s": round(time.monotonic() - t0, 3)}
        # cut answers and model calls per segment; the report sums them (never silent)
        usage = dict(job.options.get("segments_usage") or {})
        usage[str(index)] = {
            "calls": analysis.calls,
            "prompts": analysis.prompts,
            "transcribed_s": analysis.transcribed_s,
            "truncated": analysis.truncated,
        }
        job.options = {**job.options, "segments_usage": usage}
    return _all_done(job_id, settings)


def _all_done(job_id: str, settings: Settings) -> bool:
    with session_scope(settings.database_url) as s:
        pending = s.scalar(
            select(func.count()).where(m.Segment.job_id == job_id, m.Segment.status != "done")
        )
        return pending == 0
