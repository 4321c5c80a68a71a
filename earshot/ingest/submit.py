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

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy.exc import IntegrityError

from earshot import storage
from earshot.config import Settings
from earshot.db.base import utcnow
from earshot.db.models import Job
from earshot.db.session import session_scope
from earshot.errors import ConfigError, StorageError
from earshot.ingest.filters import Reject, Skip
from earshot.ingest.models import IngestReceipt
from earshot.jobs.service import SourceObject, create_job, object_idempotency_key

__all__ = [
    "Enqueue",
    "ObjectVersion",
    "Submitted",
    "enqueue_once",
    "head_object",
    "ingest_tasks",
    "output_prefix_for",
    "submit_object",
]

log = logging.getLogger("earshot.ingest")

Enqueue = Callable[[str], Any]

_MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchVersion"})
_DENIED = frozenset({"403", "AccessDenied", "AllAccessDisabled"})


@dataclass(frozen=True)
class ObjectVersion:
    """What the queue will process: one version of one object."""

    bucket: str
    key: str
    size: int | None
    etag: str | None
    version_id: str | None = None
    last_modified: datetime | None = None

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def version(self) -> str:
        return self.version_id or self.etag or ""


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
    bucket: str, key: str, version_id: str | None = None
) -> ObjectVersion | Skip | Reject:
    """The object as S3 has it now; Skip if it is gone, Reject if the bucket is unknown.

    Transient failures raise StorageError(retryable=True); the message is retried.
    """
    client = storage.s3_client()
    kwargs: dict[str, str] = {"Bucket": bucket, "Key": key}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        head = client.head_object(**kwargs)  # type: ignore[arg-type]
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError as bexc:
                bcode = str(bexc.response.get("Error", {}).get("Code", ""))
                if bcode in _MISSING or bcode == "NoSuchBucket":
                    return Reject("unknown_bucket", f"bucket {bucket!r} does not exist")
                if bcode in _DENIED:
                    return Reject("access_denied", f"no access to bucket {bucket!r}")
                raise _transient(bexc, bucket, key) from bexc
            return Skip("object_gone", "deleted before it was processed")
        if code == "NoSuchBucket":
            return Reject("unknown_bucket", f"bucket {bucket!r} does not exist")
        if code in _DENIED:
            return Reject("access_denied", f"HEAD s3://{bucket}/{key} was denied")
        raise _transient(exc, bucket, key) from exc
    except BotoCoreError as exc:
        raise _transient(exc, bucket, key) from exc
    version = head.get("VersionId")
    return ObjectVersion(
        bucket=bucket,
        key=key,
        size=head.get("ContentLength"),
        etag=(head.get("ETag") or "").strip('"') or None,
        version_id=version if version and version != "null" else None,
        last_modified=head.get("LastModified"),
    )


def _transient(exc: Exception, bucket: str, key: str) -> StorageError:
    err = StorageError(f"cannot HEAD s3://{bucket}/{key}: {exc}")
    err.retryable = True
    return err


def submit_object(
    obj: ObjectVersion,
    *,
    settings: Settings,
    enqueue: Enqueue,
    source: str,
    event_time: datetime | None = None,
) -> Submitted:
    """Create (or find) the job of this object version and make sure it was enqueued once."""
    tasks = ingest_tasks(settings)
    uri = obj.uri
    key = object_idempotency_key(uri, obj.version, tasks)
    with session_scope() as s:
        job, created = create_job(
            s,
            source=SourceObject(
                uri=uri, bucket=obj.bucket, key=obj.key, version=obj.version, etag=obj.etag,
                size_bytes=obj.size,
            ),
            tasks=tasks,
            engine=settings.engine,
            idempotency_key=key,
            output_prefix=output_prefix_for(settings, obj.bucket),
            options={"output_stem": obj.key, "ingest_source": source},
        )
        if created:
            s.add(IngestReceipt(job_id=job.id, source=source[:255], event_time=event_time))
        job_id, status = job.id, job.status
    enqueued = enqueue_once(
        job_id, enqueue=enqueue, source=source, event_time=event_time, status=status
    )
    if created:
        log.info("job %s created for %s (version %s) from %s", job_id, uri, obj.version, source)
    return Submitted(job_id=job_id, uri=uri, created=created, enqueued=enqueued)


def enqueue_once(
    job_id: str,
    *,
    enqueue: Enqueue,
    source: str = "",
    event_time: datetime | None = None,
    status: str | None = None,
) -> bool:
    """Publish ``process_job`` unless the receipt says it was; True if this call published.

    ``status`` is the job's status if the caller just read it (saves a query).
    """
    with session_scope() as s:
        receipt = s.get(IngestReceipt, job_id, with_for_update=True)
        if receipt is None:
            # A job someone else created (API, CLI) with the same key: its creator enqueues it.
            try:
                with s.begin_nested():
                    s.add(
                        IngestReceipt(
                            job_id=job_id, source=f"external:{source}"[:255],
                            event_time=event_time, enqueued_at=utcnow(),
                        )
                    )
            except IntegrityError:
                pass
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
