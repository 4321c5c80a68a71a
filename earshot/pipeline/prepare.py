"""Step 1: fetch the source, check it, decode, split at quiet points, store FLAC segments."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path, PurePosixPath

from sqlalchemy import delete, select

from earshot import storage
from earshot.audio import decode_stream, probe, segment_stream, write_flac
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import AudioError, InputError
from earshot.jobs.service import claim_running


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scratch_prefix(settings: Settings, job_id: str) -> str:
    return storage.join_uri(settings.scratch_url, job_id)


def prepare_job(job_id: str, settings: Settings) -> list[int]:
    """Split the job's audio into segments; return the indices still to analyze.

    Run twice (a redelivered task), it reuses the segments already written.
    """
    t0 = time.monotonic()
    with session_scope() as s:
        job = claim_running(s, job_id)
        if job is None:
            return []
        if job.segment_count:
            return [seg.index for seg in job.segments if seg.status != "done"]
        source = job.source_uri
        audio_file_id = job.audio_file_id

    info = storage.head(source)
    if info.size == 0:
        raise AudioError("file is empty (0 bytes)", code="empty_file")
    if info.size > settings.max_file_bytes:
        raise InputError(
            f"file is {info.size} bytes, over the limit of {settings.max_file_bytes} bytes "
            "(EARSHOT_MAX_FILE_BYTES)",
            code="too_large",
        )
    prefix = scratch_prefix(settings, job_id)
    rows: list[m.Segment] = []
    with tempfile.TemporaryDirectory(prefix="earshot-") as tmp:
        suffix = PurePosixPath(storage.parse_uri(source).key).suffix[:16]
        local = Path(tmp) / f"input{suffix}"
        storage.download_to(source, local)
        audio_info = probe(local, max_duration_s=settings.max_duration_s)
        sha = _sha256(local)
        for seg in segment_stream(
            decode_stream(local, max_duration_s=settings.max_duration_s),
            max_segment_s=settings.max_segment_s,
        ):
            flac = Path(tmp) / f"seg-{seg.index:05d}.flac"
            write_flac(seg.samples, flac)
            uri = storage.join_uri(prefix, flac.name)
            storage.put_file(uri, flac, content_type="audio/flac")
            flac.unlink()
            rows.append(
                m.Segment(
                    job_id=job_id, index=seg.index, start_s=seg.start_s, end_s=seg.end_s,
                    status="pending", scratch_uri=uri,
                )
            )
    if not rows:
        raise AudioError("the file holds 0 s of audio", code="zero_duration")

    with session_scope() as s:
        s.execute(delete(m.Segment).where(m.Segment.job_id == job_id))
        s.add_all(rows)
        job = s.get(m.Job, job_id)
        assert job is not None
        job.segment_count = len(rows)
        job.progress = 0.05
        job.timings = {**job.timings, "prepare_s": round(time.monotonic() - t0, 3)}
        audio = s.scalar(select(m.AudioFile).where(m.AudioFile.id == audio_file_id))
        if audio is not None:
            audio.sha256 = sha
            audio.size_bytes = info.size
            audio.duration_s = rows[-1].end_s
            audio.format = audio_info.format_name
    return [r.index for r in rows]
