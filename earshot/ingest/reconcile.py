"""The reconciler: list a bucket prefix and enqueue every object that has no job yet.

Events can be lost (a misconfigured notification, a queue purged, a bridge down longer than
the queue's retention). The reconciler makes the bucket the source of truth: an object
version counts as known when an ``audio_files`` row with a job has its uri and its version
(or etag). Unknown objects that pass the same filters as the bridge go through the same
:func:`submit_object` (idempotent key + enqueue receipt), so running it while the bridge
runs, twice at once, or every minute never makes a second job.

It also re-sends ``process_job`` for ingest jobs whose receipt was never marked enqueued
(a bridge that died between committing the job and publishing) after a grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice

from sqlalchemy import select

from earshot import storage
from earshot.config import Settings
from earshot.db.models import AudioFile, Job
from earshot.db.session import session_scope
from earshot.errors import EarshotError
from earshot.ingest.deadletters import record_dead_letter
from earshot.ingest.filters import Filters, Reject, Skip
from earshot.ingest.models import IngestReceipt
from earshot.ingest.submit import (
    Enqueue,
    enqueue_once,
    head_object,
    output_prefix_for,
    submit_object,
)

__all__ = ["ScanReport", "scan"]

log = logging.getLogger("earshot.ingest")
_BATCH = 500


@dataclass
class ScanReport:
    prefix: str
    listed: int = 0
    eligible: int = 0
    known: int = 0
    missing: list[str] = field(default_factory=list)  # uris with no job (dry run: would enqueue)
    enqueued: list[tuple[str, str]] = field(default_factory=list)  # (uri, job_id)
    requeued: list[str] = field(default_factory=list)  # job ids re-sent (never marked enqueued)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "dry_run": self.dry_run,
            "listed": self.listed,
            "eligible": self.eligible,
            "known": self.known,
            "missing": self.missing,
            "enqueued": [{"uri": u, "job_id": j} for u, j in self.enqueued],
            "requeued": self.requeued,
            "skipped": self.skipped,
            "rejected": [{"uri": u, "reason": r} for u, r in self.rejected],
        }


def _chunks(items: Iterable[storage.ObjectInfo], size: int) -> Iterator[list[storage.ObjectInfo]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _known(uris: list[str], database_url: str) -> set[tuple[str, str]]:
    """(uri, version-or-etag) pairs that already have a job (one that did not fail on an
    outage: those are submitted again, which retries them)."""
    if not uris:
        return set()
    with session_scope(database_url) as s:
        rows = s.execute(
            select(AudioFile.uri, AudioFile.version, AudioFile.etag)
            .join(Job, Job.audio_file_id == AudioFile.id)
            .where(AudioFile.uri.in_(uris))
            .where(~((Job.status == "failed") & Job.retryable.is_(True)))
        ).all()
    known: set[tuple[str, str]] = set()
    for uri, version, etag in rows:
        known.add((uri, version))
        if etag:
            known.add((uri, etag))
    return known


def scan(
    prefix_uri: str,
    *,
    settings: Settings,
    enqueue: Enqueue,
    dry_run: bool = False,
    min_age_s: float = 0.0,
    requeue_after_s: float = 300.0,
    filters: Filters | None = None,
) -> ScanReport:
    """One pass over ``s3://bucket/prefix``."""
    ref = storage.parse_uri(prefix_uri)
    if ref.scheme != "s3" or not ref.bucket:
        raise ValueError(f"{prefix_uri!r}: the reconciler scans s3://bucket/prefix")
    output_prefix_for(settings, ref.bucket)  # refuse an empty output prefix
    filters = filters or Filters.from_settings(settings)
    report = ScanReport(prefix=ref.uri, dry_run=dry_run)
    bad_bucket = filters.check_bucket(ref.bucket)
    if bad_bucket is not None:
        raise ValueError(bad_bucket.detail)
    newest = datetime.now(UTC) - timedelta(seconds=min_age_s)
    source = f"scan:{ref.uri}"

    for chunk in _chunks(storage.list_objects(ref.uri, settings=settings), _BATCH):
        report.listed += len(chunk)
        candidates: list[tuple[storage.ObjectInfo, str]] = []
        for info in chunk:
            key = storage.parse_uri(info.uri).key
            verdict = filters.check_key(ref.bucket, key) or filters.check_size(info.size)
            if isinstance(verdict, Skip):
                report.skipped[verdict.reason] = report.skipped.get(verdict.reason, 0) + 1
                continue
            if isinstance(verdict, Reject):
                report.rejected.append((info.uri, verdict.reason))
                continue
            if min_age_s and info.last_modified and info.last_modified > newest:
                report.skipped["too_recent"] = report.skipped.get("too_recent", 0) + 1
                continue
            candidates.append((info, key))
        report.eligible += len(candidates)
        known = _known([info.uri for info, _ in candidates], settings.database_url)
        for info, key in candidates:
            if (info.uri, info.etag or "") in known:
                report.known += 1
                continue
            report.missing.append(info.uri)
            if dry_run:
                continue
            _submit_missing(info, key, ref.bucket, settings, enqueue, source, report)

    if not dry_run:
        report.requeued = requeue_unsent(
            enqueue=enqueue, older_than_s=requeue_after_s, prefix=ref.uri,
            database_url=settings.database_url,
        )
    log.info(
        "scan %s: %d listed, %d eligible, %d known, %d missing, %d enqueued%s",
        ref.uri, report.listed, report.eligible, report.known, len(report.missing),
        len(report.enqueued), " (dry run)" if dry_run else "",
    )
    return report


def _submit_missing(
    info: storage.ObjectInfo,
    key: str,
    bucket: str,
    settings: Settings,
    enqueue: Enqueue,
    source: str,
    report: ScanReport,
) -> None:
    found = head_object(bucket, key, settings=settings) if settings.ingest_verify_objects else info
    if isinstance(found, Skip):
        report.skipped[found.reason] = report.skipped.get(found.reason, 0) + 1
        return
    if isinstance(found, Reject):
        report.rejected.append((info.uri, found.reason))
        return
    try:
        submitted = submit_object(
            found, settings=settings, enqueue=enqueue, source=source,
            event_time=found.last_modified or info.last_modified,
        )
    except EarshotError as exc:
        if exc.retryable:
            raise
        with session_scope(settings.database_url) as s:
            record_dead_letter(
                s, source=source, reason=exc.code, detail=exc.message, body={"uri": info.uri},
                bucket=bucket, key=key,
            )
        report.rejected.append((info.uri, exc.code))
        return
    report.enqueued.append((info.uri, submitted.job_id))


def requeue_unsent(
    *, enqueue: Enqueue, older_than_s: float, database_url: str, prefix: str | None = None
) -> list[str]:
    """Enqueue ingest jobs whose receipt was never marked enqueued (a bridge crashed)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    with session_scope(database_url) as s:
        q = (
            select(IngestReceipt.job_id)
            .join(Job, Job.id == IngestReceipt.job_id)
            .where(IngestReceipt.enqueued_at.is_(None), IngestReceipt.received_at < cutoff)
        )
        if prefix:
            q = q.where(Job.source_uri.startswith(prefix, autoescape=True))
        job_ids = list(s.scalars(q.limit(1000)))
    sent = [
        j for j in job_ids if enqueue_once(j, enqueue=enqueue, source="scan", database_url=database_url)
    ]
    if sent:
        log.warning("re-sent %d job(s) that were never marked enqueued", len(sent))
    return sent
