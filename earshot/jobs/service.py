"""Job lifecycle. Keyword-only functions used by the CLI, the API, the ingest bridge and tasks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from earshot.callbacks.outbox import record_callback
from earshot.config import Settings
from earshot.db.base import new_id, utcnow
from earshot.db.models import TERMINAL_STATUSES, AudioFile, Job, Segment
from earshot.errors import EarshotError, InputError
from earshot.prompts import TASKS
from earshot.storage import ObjectInfo
from earshot.tenants import DEFAULT_TENANT

R = TypeVar("R")


def get_or_create(session: Session, lookup: Select[R], make: Callable[[], R]) -> tuple[R, bool]:
    """The row ``lookup`` finds, or a new one from ``make``; safe when two processes race.

    The insert runs in a savepoint; a unique-constraint loser re-reads the winner's row.
    Returns (row, created).
    """
    found = session.scalar(lookup)
    if found is not None:
        return found, False
    row = make()
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        found = session.scalar(lookup)
        if found is None:
            raise
        return found, False
    return row, True


def validate_tasks(tasks: Sequence[str]) -> list[str]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InputError(
            f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}",
            code="unknown_task",
        )
    if not tasks:
        raise InputError("at least one task is required", code="no_tasks")
    return list(dict.fromkeys(tasks))


def _audio_file(session: Session, src: ObjectInfo) -> AudioFile:
    ref = src.ref
    audio, _ = get_or_create(
        session,
        select(AudioFile).where(AudioFile.uri == src.uri, AudioFile.version == src.version),
        lambda: AudioFile(
            uri=src.uri, bucket=ref.bucket, key=ref.key, version=src.version, etag=src.etag,
            size_bytes=src.size,
        ),
    )
    return audio


def pinned_version(audio: AudioFile) -> ObjectInfo:
    """The exact version a job must read: its version id, else its etag (If-Match)."""
    version_id = audio.version if audio.version and audio.version != audio.etag else None
    return ObjectInfo(uri=audio.uri, size=audio.size_bytes, etag=audio.etag, version_id=version_id)


def create_job(
    session: Session,
    *,
    source: ObjectInfo,
    tasks: Sequence[str],
    engine: str,
    idempotency_key: str | None = None,
    questions: Sequence[str] = (),
    output_prefix: str | None = None,
    callback_url: str | None = None,
    options: dict[str, object] | None = None,
    tenant_id: str = DEFAULT_TENANT,
    request_fingerprint: str | None = None,
) -> tuple[Job, bool]:
    """Create a job, or return the existing one with the same idempotency key.

    Returns (job, created). The unique constraint on (tenant, key) makes this safe under
    races: a duplicate event or a retried API call is a no-op. Keys are per tenant: another
    tenant's same key is another job.
    """
    tasks = validate_tasks(tasks)
    key = idempotency_key or new_id()
    same_key = select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    existing = session.scalar(same_key)
    if existing is not None:
        return existing, False
    audio = _audio_file(session, source)
    return get_or_create(
        session,
        same_key,
        lambda: Job(
            audio_file_id=audio.id,
            source_uri=source.uri,
            status="queued",
            tasks=tasks,
            questions=list(questions),
            options=dict(options or {}),
            engine=engine,
            idempotency_key=key,
            output_prefix=output_prefix,
            callback_url=callback_url,
            tenant_id=tenant_id,
            request_fingerprint=request_fingerprint,
        ),
    )


def object_idempotency_key(uri: str, version: str, tasks: Sequence[str]) -> str:
    return f"{uri}@{version}#{','.join(sorted(tasks))}"


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    source_prefix: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = 50,
    before: tuple[datetime, str] | None = None,
) -> list[Job]:
    """Newest first; ``before`` is a (created_at, id) cursor from the previous page."""
    q = select(Job)
    if status:
        q = q.where(Job.status == status)
    if source_prefix:
        q = q.where(Job.source_uri.startswith(source_prefix, autoescape=True))
    if created_after:
        q = q.where(Job.created_at >= created_after)
    if created_before:
        q = q.where(Job.created_at < created_before)
    if before:
        ts, jid = before
        q = q.where((Job.created_at < ts) | ((Job.created_at == ts) & (Job.id < jid)))
    q = q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    return list(session.scalars(q))


def active_job(session: Session, job_id: str, *, lock: bool = False) -> Job | None:
    """The job, unless it is missing or already terminal (then a step has nothing to do)."""
    job = session.get(Job, job_id, with_for_update=lock)
    if job is None or job.status in TERMINAL_STATUSES:
        return None
    return job


def claim_running(session: Session, job_id: str) -> Job | None:
    """Move a queued (or re-delivered running) job to running; None if it is terminal."""
    job = active_job(session, job_id, lock=True)
    if job is None:
        return None
    job.status = "running"
    job.attempts += 1
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at = utcnow()
    return job


def renew_lease(session: Session, job_id: str) -> None:
    """The running step is alive: the sweeper leaves the job alone for a while."""
    job = active_job(session, job_id)
    if job is not None:
        job.heartbeat_at = utcnow()


def finish_job(
    session: Session,
    job_id: str,
    status: str,
    *,
    settings: Settings | None,
    error: BaseException | None = None,
    retryable: bool = False,
    updates: dict[str, Any] | None = None,
) -> Job | None:
    """Make a job terminal and add its callback to the outbox, in the caller's transaction.

    None if the job was already terminal (a redelivered task: its outcome stands).
    ``settings`` gives the default callback URL (None: only the job's own).
    """
    assert status in TERMINAL_STATUSES
    job = active_job(session, job_id, lock=True)
    if job is None:
        return None
    job.status = status
    job.finished_at = utcnow()
    job.retryable = retryable
    job.settled_at = None
    if error is not None:
        job.error_code = error.code if isinstance(error, EarshotError) else "internal_error"
        message = error.message if isinstance(error, EarshotError) else f"{type(error).__name__}: {error}"
        job.error_message = message[:4000]
    for name, value in (updates or {}).items():
        setattr(job, name, value)
    session.flush()
    record_callback(session, job, settings=settings)
    return job


def fail_job(
    session: Session,
    job_id: str,
    error: BaseException,
    *,
    settings: Settings | None = None,
    retryable: bool = False,
) -> None:
    finish_job(session, job_id, "failed", settings=settings, error=error, retryable=retryable)


def cancel_job(session: Session, job_id: str, *, settings: Settings | None = None) -> Job | None:
    finish_job(session, job_id, "cancelled", settings=settings)
    return session.get(Job, job_id)


def reset_for_retry(session: Session, job_id: str) -> Job | None:
    """A failed or cancelled job goes back to queued. Its segments are dropped (settling deleted
    their scratch files) and prepared again; result rows are replaced as the segments rerun."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status in ("failed", "cancelled"):
        job.status = "queued"
        job.error_code = None
        job.error_message = None
        job.finished_at = None
        job.progress = 0.0
        job.retryable = False
        job.heartbeat_at = utcnow()
        job.settled_at = None
        # settling deleted the scratch segments: the retry prepares them again
        session.execute(delete(Segment).where(Segment.job_id == job_id))
        job.segment_count = None
    return job


def retry_failed(
    session: Session, *, job_ids: Sequence[str] = (), codes: Sequence[str] = (), limit: int = 1000
) -> list[str]:
    """Reset failed jobs (these ids, or every failed job with one of these error codes, or
    every failed job) to queued; the caller enqueues the ids returned after its commit."""
    q = select(Job).where(Job.status == "failed")
    if job_ids:
        q = q.where(Job.id.in_(list(job_ids)))
    if codes:
        q = q.where(Job.error_code.in_(list(codes)))
    reset: list[str] = []
    for job in session.scalars(q.order_by(Job.created_at).limit(limit)):
        reset_for_retry(session, job.id)
        reset.append(job.id)
    return reset
