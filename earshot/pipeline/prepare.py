"""Step 1: fetch the exact source version, check it, decode, split at quiet points, store FLAC.

The job reads the version it was created for (its S3 version id, or If-Match on its ETag;
the ``mtime-size`` tag for local files). If that version is gone or was overwritten, the job
ends ``superseded``: the newer version has a job of its own.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path, PurePosixPath

from sqlalchemy import delete, select

from earshot import storage
from earshot.audio import decode_stream, probe, segment_stream, write_flac
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.base import utcnow
from earshot.db.session import session_scope
from earshot.errors import AudioError, InputError, StorageError
from earshot.jobs.failures import Superseded
from earshot.jobs.outputs import scratch_prefix
from earshot.jobs.service import claim_running, pinned_version
from earshot.tenants import QuotaExceeded, check_audio_budget

log = logging.getLogger("earshot.prepare")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_version(source: storage.ObjectInfo, settings: Settings) -> storage.ObjectInfo:
    """The job's version as the store has it now; Superseded if it is gone or replaced."""
    try:
        info = storage.head(source.uri, version_id=source.version_id, settings=settings)
    except storage.NotFound as exc:
        if exc.bucket_missing or not source.version:
            raise InputError(f"cannot read {source.uri}: {exc.message}", code="source_not_found") from exc
        raise Superseded(f"{source.uri} (version {source.version}) no longer exists") from exc
    if source.version and not source.version_id and info.etag != source.etag:
        raise Superseded(
            f"{source.uri} was overwritten (etag {info.etag}) before this job (etag {source.etag}) read it"
        )
    return info


def _download(source: storage.ObjectInfo, local: Path, settings: Settings) -> None:
    try:
        storage.download_to(source.uri, local, version=source if source.version else None, settings=settings)
    except StorageError as exc:
        if exc.code == "version_mismatch" or (isinstance(exc, storage.NotFound) and not exc.bucket_missing):
            raise Superseded(f"{source.uri} changed while this job read it: {exc.message}") from exc
        raise


def _short_note(job_id: str, uri: str, decoded_s: float, header_s: float | None) -> str | None:
    """A note when the file decodes to much less audio than its header announces."""
    if not header_s or decoded_s >= header_s - max(1.0, 0.05 * header_s):
        return None
    return (
        f"job {job_id}: {uri} decoded to {decoded_s:.1f} s of audio but its header says "
        f"{header_s:.1f} s (truncated or damaged upload?)"
    )


def _check_audio_budget(settings: Settings, tenant_id: str, job_id: str, duration_s: float) -> None:
    """The tenant's daily audio quota, now that the length is known (the API could not know it)."""
    with session_scope(settings.database_url) as s:
        try:
            check_audio_budget(s, tenant_id, job_id, duration_s)
        except QuotaExceeded as exc:
            # a readable failure, not an outage to retry: `earshot jobs retry` once the day frees up
            raise InputError(exc.message, code="quota_exceeded") from exc


def prepare_job(job_id: str, settings: Settings) -> list[int]:
    """Split the job's audio into segments; return the indices still to analyze.

    Run twice (a redelivered task), it reuses the segments already written.
    """
    t0 = time.monotonic()
    with session_scope(settings.database_url) as s:
        job = claim_running(s, job_id)
        if job is None:
            return []
        if job.segment_count:
            return [seg.index for seg in job.segments if seg.status != "done"]
        source = pinned_version(job.audio_file)
        audio_file_id = job.audio_file_id
        tenant_id = job.tenant_id

    info = _check_version(source, settings)
    if info.size == 0:
        raise AudioError("file is empty (0 bytes)", code="empty_file")
    if info.size is not None and info.size > settings.max_file_bytes:
        raise InputError(
            f"file is {info.size} bytes, over the limit of {settings.max_file_bytes} bytes "
            "(EARSHOT_MAX_FILE_BYTES)",
            code="too_large",
        )
    prefix = scratch_prefix(settings, job_id)
    rows: list[m.Segment] = []
    with tempfile.TemporaryDirectory(prefix="earshot-") as tmp:
        suffix = PurePosixPath(storage.parse_uri(source.uri).key).suffix[:16]
        local = Path(tmp) / f"input{suffix}"
        _download(source, local, settings)
        audio_info = probe(local, max_duration_s=settings.max_duration_s)
        if audio_info.duration_s is not None:
            _check_audio_budget(settings, tenant_id, job_id, audio_info.duration_s)
        sha = _sha256(local)
        for seg in segment_stream(
            decode_stream(local, max_duration_s=settings.max_duration_s),
            max_segment_s=settings.max_segment_s,
        ):
            flac = Path(tmp) / f"seg-{seg.index:05d}.flac"
            write_flac(seg.samples, flac)
            uri = storage.join_uri(prefix, flac.name)
            storage.put_file(uri, flac, content_type="audio/flac", settings=settings)
            flac.unlink()
            rows.append(
                m.Segment(
                    job_id=job_id, index=seg.index, start_s=seg.start_s, end_s=seg.end_s,
                    status="pending", scratch_uri=uri,
                )
            )
    if not rows:
        raise AudioError("the file holds 0 s of audio", code="zero_duration")
    note = _short_note(job_id, source.uri, rows[-1].end_s, audio_info.duration_s)
    if note:
        log.warning("%s", note)

    with session_scope(settings.database_url) as s:
        s.execute(delete(m.Segment).where(m.Segment.job_id == job_id))
        s.add_all(rows)
        job = s.get(m.Job, job_id)
        assert job is not None
        job.segment_count = len(rows)
        job.progress = 0.05
        job.heartbeat_at = utcnow()
        job.timings = {**job.timings, "prepare_s": round(time.monotonic() - t0, 3)}
        if note:
            job.options = {**job.options, "short_audio": {"note": note}}
        audio = s.scalar(select(m.AudioFile).where(m.AudioFile.id == audio_file_id))
        if audio is not None:
            audio.sha256 = sha
            audio.size_bytes = info.size
            audio.duration_s = rows[-1].end_s
            audio.format = audio_info.format_name
    return [r.index for r in rows]
