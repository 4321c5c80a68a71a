"""One object version -> one job, enqueued exactly once. Shared by the bridge and the reconciler.

Identity: ``(s3://bucket/key, version id or etag)``. The job's idempotency key is
``object_idempotency_key(uri, version, tasks)``, so a duplicate event, a redelivered message
or the reconciler racing the bridge all find the same job.

Enqueueing is two transactions:

1. the job row and an :class:`IngestReceipt` (``enqueued_at`` NULL) are committed together;
2. the receipt row is locked (``SELECT ... FOR UPDATE``), ``process_job`` is published if
   ``enqueued_at`` is still NULL, and ``enqueued_at`` is set.

The job is committed before ``process_job`` can reach a worker (a worker never looks for a
job that is not there yet), and the row lock makes concurrent deliveries of one event publish
once. A crash between publishing and the second commit can publish twice; ``process_job`` is
idempotent, so that costs work, not correctness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from earshot import storage
from earshot.config import Settings
from earshot.db.base import utcnow
from earshot.db.models import Job
from earshot.db.session import session_scope
from earshot.errors import ConfigError, StorageError
from earshot.ingest.filters import Reject, Skip
from earshot.ingest.models import IngestReceipt
from earshot.jobs.service import create_job, get_or_create, object_idempotency_key, reset_for_retry
from earshot.tenants import DEFAULT_TENANT, tenant_for_source

__all__ = [
    "Enqueue",
    "Submitted",
    "enqueue_once",
    "head_object",
    "ingest_tasks",
    "output_prefix_for",
    "submit_object",
]

log = logging.getLogger("earshot.ingest")

Enqueue = Callable[[str], Any]


@dataclass(frozen=True)
class Submitted:
    job_id: str
    uri: str
    created: bool  # a new job row
    enqueued: bool  # this call published process_job


def ingest_tasks(settings: Settings) -> list[str]:
    return list(settings.ingest_tasks or settings.default_tasks)


def output_prefix_for(settings: Settings, bucket: str) -> str:
    prefix = settings.ingest_output_prefix.strip("/")
    if not prefix:
        # outputs next to inputs would be picked up again (a.wav -> a.wav.wav -> ...)
        raise ConfigError("EARSHOT_INGEST_OUTPUT_PREFIX must not be empty", code="config_error")
    return storage.join_uri(f"s3://{bucket}/", prefix)


def head_object(
    bucket: str, key: str, version_id: str | None = None, *, settings: Settings
) -> storage.ObjectInfo | Skip | Reject:
    """The object as S3 has it now; Skip if it is gone, Reject if the bucket is unknown.

    Transient failures raise StorageError(retryable=True); the message is retried.
    """
    try:
        return storage.head(f"s3://{bucket}/{key}", version_id=version_id, settings=settings)
    except storage.NotFound as exc:
        if exc.bucket_missing:
            return Reject("unknown_bucket", f"bucket {bucket!r} does not exist")
        return Skip("object_gone", "deleted before it was processed")
    except storage.AccessDenied:
        return Reject("access_denied", f"HEAD s3://{bucket}/{key} was denied")
    except StorageError as exc:
        exc.retryable = True  # anything else S3 says now may pass later: retry the message
        raise


def submit_object(
    obj: storage.ObjectInfo,
    *,
    settings: Settings,
    enqueue: Enqueue,
    source: str,
    event_time: datetime | None = None,
) -> Submitted:
    """Create (or find) the job of this object version and make sure it was enqueued once.

    A job of this version that failed on an outage (``retryable``) is reset and sent again:
    re-uploading the same bytes, a redelivered event or the reconciler revive it.
    """
    tasks = ingest_tasks(settings)
    ref = obj.ref
    key = object_idempotency_key(obj.uri, obj.version, tasks)
    with session_scope(settings.database_url) as s:
        # the tenant whose allow-list claims the object owns its job (issue 14); else the default
        tenant_id = tenant_for_source(s, obj.uri) or DEFAULT_TENANT
        job, created = create_job(
            s,
            source=obj,
            tasks=tasks,
            engine=settings.engine,
            idempotency_key=key,
            output_prefix=output_prefix_for(settings, ref.bucket or ""),
            options={"output_stem": ref.key, "ingest_source": source},
            tenant_id=tenant_id,
        )
        receipt = s.get(IngestReceipt, job.id) if not created else None
        if created or (receipt is None and job.status == "failed" and job.retryable):
            s.add(IngestReceipt(job_id=job.id, source=source[:255], event_time=event_time))
        elif job.status == "failed" and job.retryable:
            assert receipt is not None
            receipt.enqueued_at = None
        if not created and job.status == "failed" and job.retryable:
            reset_for_retry(s, job.id)
            log.info("job %s of %s failed on an outage: sent again", job.id, obj.uri)
        job_id, status = job.id, job.status
    enqueued = enqueue_once(
        job_id, enqueue=enqueue, source=source, event_time=event_time, status=status,
        database_url=settings.database_url,
    )
    if created:
        log.info("job %s created for %s (version %s) from %s", job_id, obj.uri, obj.version, source)
    return Submitted(job_id=job_id, uri=obj.uri, created=created, enqueued=enqueued)


def enqueue_once(
    job_id: str,
    *,
    enqueue: Enqueue,
    source: str = "",
    event_time: datetime | None = None,
    status: str | None = None,
    database_url: str,
) -> bool:
    """Publish ``process_job`` unless the receipt says it was; True if this call published.

    ``status`` is the job's status if the caller just read it (saves a query).
    """
    with session_scope(database_url) as s:
        receipt = s.get(IngestReceipt, job_id, with_for_update=True)
        if receipt is None:
            # A job someone else created (API, CLI) with the same key: its creator enqueues it.
            get_or_create(
                s,
                select(IngestReceipt).where(IngestReceipt.job_id == job_id),
                lambda: IngestReceipt(
                    job_id=job_id, source=f"external:{source}"[:255], event_time=event_time,
                    enqueued_at=utcnow(),
                ),
            )
            return False
        if receipt.enqueued_at is not None:
            return False
        if status is None:
            job = s.get(Job, job_id)
            status = job.status if job is not None else None
        if status == "queued":
            enqueue(job_id)
            published = True
        else:
            published = False  # already running or finished: nothing to send
        receipt.enqueued_at = utcnow()
    return published
