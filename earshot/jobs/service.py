"""Job lifecycle. Keyword-only functions used by the CLI, the API, the ingest bridge and tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from earshot.db.base import new_id, utcnow
from earshot.db.models import TERMINAL_STATUSES, AudioFile, Job
from earshot.errors import EarshotError, InputError
from earshot.prompts import TASKS


@dataclass(frozen=True)
class SourceObject:
    """What identifies an upload: the same (uri, version) is the same upload."""

    uri: str
    bucket: str | None
    key: str
    version: str = ""
    etag: str | None = None
    size_bytes: int | None = None


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


def _audio_file(session: Session, src: SourceObject) -> AudioFile:
    found = session.scalar(
        select(AudioFile).where(AudioFile.uri == src.uri, AudioFile.version == src.version)
    )
    if found is not None:
        return found
    audio = AudioFile(
        uri=src.uri,
        bucket=src.bucket,
        key=src.key,
        version=src.version,
        etag=src.etag,
        size_bytes=src.size_bytes,
    )
    try:
        with session.begin_nested():
            session.add(audio)
    except IntegrityError:
        # another process registered the same upload a moment ago
        found = session.scalar(
            select(AudioFile).where(AudioFile.uri == src.uri, AudioFile.version == src.version)
        )
        assert found is not None
        return found
    return audio


def create_job(
    session: Session,
    *,
    source: SourceObject,
    tasks: Sequence[str],
    engine: str,
    idempotency_key: str | None = None,
    questions: Sequence[str] = (),
    output_prefix: str | None = None,
    callback_url: str | None = None,
    options: dict[str, object] | None = None,
) -> tuple[Job, bool]:
    """Create a job, or return the existing one with the same idempotency key.

    Returns (job, created). The unique constraint on the key makes this safe under races:
    a duplicate event or a retried API call is a no-op.
    """
    tasks = validate_tasks(tasks)
    key = idempotency_key or new_id()
    existing = session.scalar(select(Job).where(Job.idempotency_key == key))
    if existing is not None:
        return existing, False
    audio = _audio_file(session, source)
    job = Job(
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
    )
    try:
        with session.begin_nested():
            session.add(job)
    except IntegrityError:
        existing = session.scalar(select(Job).where(Job.idempotency_key == key))
        if existing is None:
            raise
        return existing, False
    return job, True


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


def claim_running(session: Session, job_id: str) -> Job | None:
    """Move a queued (or re-delivered running) job to running; None if it is terminal."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None or job.status in TERMINAL_STATUSES:
        return None
    job.status = "running"
    job.attempts += 1
    job.started_at = job.started_at or utcnow()
    return job


def fail_job(session: Session, job_id: str, error: BaseException) -> None:
    code = error.code if isinstance(error, EarshotError) else "internal_error"
    message = error.message if isinstance(error, EarshotError) else f"{type(error).__name__}: {error}"
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(("succeeded", "cancelled")))
        .values(
            status="failed",
            error_code=code,
            error_message=message[:4000],
            finished_at=utcnow(),
            updated_at=utcnow(),
        )
    )


def cancel_job(session: Session, job_id: str) -> Job | None:
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status not in TERMINAL_STATUSES:
        job.status = "cancelled"
        job.finished_at = utcnow()
    return job


def reset_for_retry(session: Session, job_id: str) -> Job | None:
    """A failed or cancelled job goes back to queued, its partial results kept for upsert."""
    job = session.get(Job, job_id, with_for_update=True)
    if job is None:
        return None
    if job.status in ("failed", "cancelled"):
        job.status = "queued"
        job.error_code = None
        job.error_message = None
        job.finished_at = None
        job.progress = 0.0
    return job
