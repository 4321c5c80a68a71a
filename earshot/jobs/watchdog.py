"""The watchdog: settle finished jobs, re-enqueue stuck ones, retry outage failures, resend
pending callbacks. Run by ``earshot jobs reap`` (once, or ``--interval``), by the chart's
sweeper, and after every scan of the reconciler CronJob.

Reliable job systems do it this way (Sidekiq's reliable fetch, Temporal's activity
heartbeats): the running step holds a lease (``jobs.heartbeat_at``, renewed every
``EARSHOT_JOB_HEARTBEAT_S`` by the task) and a sweeper treats an expired lease as a lost
message. Everything here is idempotent: every task checks the job's state first, so a job
enqueued twice runs its remaining steps once.

- **stuck**: not terminal and no lease renewal (or start) for ``EARSHOT_JOB_STALE_AFTER_S``:
  ``process_job`` is sent again (it resumes from the segments already done), and the lease
  is renewed so the next sweep waits another window.
- **retryable failures** (``jobs.retryable``: an outage outlasted the task's retry window):
  after ``EARSHOT_JOB_RETRY_FAILED_AFTER_S`` the job is reset to ``queued`` and sent again,
  at most ``EARSHOT_JOB_INFRA_RETRY_LIMIT`` times (``options.infra_retries``).
- **unsettled**: terminal, but scratch cleanup / callback hand-off did not finish (a worker
  died right after the final commit): :func:`settle_job` runs.
- **pending callbacks** overdue by a stale window: sent to the queue again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Gauge
from sqlalchemy import func, select

from earshot import storage
from earshot.callbacks.models import CallbackDelivery
from earshot.callbacks.outbox import pending_deliveries
from earshot.config import Settings
from earshot.db.base import utcnow
from earshot.db.models import TERMINAL_STATUSES, Job
from earshot.db.session import session_scope
from earshot.jobs.outputs import scratch_prefix
from earshot.jobs.service import reset_for_retry

__all__ = ["ReapReport", "observe", "queue_depths", "reap", "settle_job"]

log = logging.getLogger("earshot.watchdog")

Send = Callable[[str], Any]

STUCK = Gauge("earshot_jobs_stuck", "Non-terminal jobs whose lease expired")
OLDEST = Gauge("earshot_jobs_oldest_nonterminal_age_seconds", "Age of the oldest queued or running job")
NONTERMINAL = Gauge("earshot_jobs_nonterminal", "Jobs by non-terminal status", ["status"])
PENDING_CALLBACKS = Gauge("earshot_callbacks_pending", "Completion callbacks not yet delivered")
RETRYABLE = Gauge("earshot_jobs_failed_retryable", "Jobs failed on an outage, waiting for a retry")
QUEUE_DEPTH = Gauge("earshot_queue_depth", "Messages waiting in a Celery queue", ["queue"])
FINISHED_RECENT = Gauge(
    "earshot_jobs_finished_recent", "Jobs finished in the last 15 minutes", ["status", "code"]
)


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)  # stuck jobs sent again
    retried: list[str] = field(default_factory=list)  # outage failures reset and sent again
    settled: list[str] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)  # delivery ids sent again

    def as_dict(self) -> dict[str, list[str]]:
        return {
            "requeued": self.requeued, "retried": self.retried, "settled": self.settled,
            "callbacks": self.callbacks,
        }


def settle_job(job_id: str, *, settings: Settings, send_callback: Send) -> bool:
    """Side effects of a terminal job, each idempotent: delete scratch, hand callbacks to the
    queue, mark it settled. False if the job is not terminal or already settled.

    Storage and broker errors propagate; the job stays unsettled and the sweeper retries.
    """
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        if job is None or job.status not in TERMINAL_STATUSES or job.settled_at is not None:
            return False
        deliveries = pending_deliveries(s, job_id)
    storage.delete_prefix(scratch_prefix(settings, job_id) + "/", settings=settings)
    for delivery_id in deliveries:
        send_callback(delivery_id)
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id, with_for_update=True)
        if job is not None and job.settled_at is None:
            job.settled_at = utcnow()
    return True


def _stale_cutoff(settings: Settings, now: datetime) -> datetime:
    return now - timedelta(seconds=settings.job_stale_after_s)


def reap(
    *,
    settings: Settings,
    enqueue: Send,
    send_callback: Send,
    now: datetime | None = None,
    limit: int = 500,
) -> ReapReport:
    """One sweep. ``enqueue`` sends ``process_job``; ``send_callback`` sends a delivery."""
    now = now or utcnow()
    report = ReapReport()
    url = settings.database_url
    stale = _stale_cutoff(settings, now)
    lease = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)

    with session_scope(url) as s:
        stuck = list(
            s.scalars(
                select(Job.id)
                .where(Job.status.in_(("queued", "running")), lease < stale)
                .order_by(lease)
                .limit(limit)
            )
        )
    for job_id in stuck:
        enqueue(job_id)
        with session_scope(url) as s:
            job = s.get(Job, job_id)
            if job is not None and job.status not in TERMINAL_STATUSES:
                job.heartbeat_at = now  # one resend per stale window
        report.requeued.append(job_id)
        log.warning("job %s made no progress for %.0f s: sent again", job_id, settings.job_stale_after_s)

    # a live worker settles right after its commit; give it three heartbeats first
    settle_before = now - timedelta(seconds=3 * settings.job_heartbeat_s)
    with session_scope(url) as s:
        unsettled = list(
            s.scalars(
                select(Job.id)
                .where(
                    Job.status.in_(TERMINAL_STATUSES),
                    Job.settled_at.is_(None),
                    func.coalesce(Job.finished_at, Job.updated_at) < settle_before,
                )
                .limit(limit)
            )
        )
    handed: set[str] = set()  # deliveries sent by settling, not to be resent in this sweep

    def send_once(delivery_id: str) -> None:
        handed.add(delivery_id)
        send_callback(delivery_id)

    for job_id in unsettled:
        if settle_job(job_id, settings=settings, send_callback=send_once):
            report.settled.append(job_id)

    retry_before = now - timedelta(seconds=settings.job_retry_failed_after_s)
    with session_scope(url) as s:
        candidates = list(
            s.scalars(
                select(Job)
                .where(Job.status == "failed", Job.retryable.is_(True), Job.finished_at < retry_before)
                .limit(limit)
            )
        )
        to_retry: list[str] = []
        for job in candidates:
            done = int(job.options.get("infra_retries", 0))
            if done >= settings.job_infra_retry_limit:
                continue
            # settle first (scratch, callback of the failure) so a retry starts clean
            if job.settled_at is None:
                continue
            reset_for_retry(s, job.id)
            job.options = {**job.options, "infra_retries": done + 1}
            to_retry.append(job.id)
    for job_id in to_retry:
        enqueue(job_id)
        report.retried.append(job_id)
        log.info("job %s failed on an outage: retried", job_id)

    with session_scope(url) as s:
        overdue = list(
            s.scalars(
                select(CallbackDelivery.id)
                .join(Job, Job.id == CallbackDelivery.job_id)
                .where(
                    CallbackDelivery.state == "pending",
                    Job.settled_at.is_not(None),
                    func.coalesce(CallbackDelivery.next_attempt_at, CallbackDelivery.created_at)
                    < settle_before,
                )
                .limit(limit)
            )
        )
    for delivery_id in overdue:
        if delivery_id in handed:
            continue
        send_callback(delivery_id)
        with session_scope(url) as s:
            row = s.get(CallbackDelivery, delivery_id)
            if row is not None and row.state == "pending":
                row.next_attempt_at = now + timedelta(seconds=settings.job_stale_after_s)
        report.callbacks.append(delivery_id)
    observe(settings=settings, now=now)
    return report


def observe(*, settings: Settings, now: datetime | None = None) -> dict[str, float]:
    """Set the watchdog's gauges from the database; returns them for logs and tests."""
    now = now or utcnow()
    stale = _stale_cutoff(settings, now)
    lease = func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)
    with session_scope(settings.database_url) as s:
        stuck = s.scalar(
            select(func.count()).where(Job.status.in_(("queued", "running")), lease < stale)
        ) or 0
        oldest = s.scalar(select(func.min(Job.created_at)).where(Job.status.in_(("queued", "running"))))
        by_status = dict(
            s.execute(
                select(Job.status, func.count())
                .where(Job.status.in_(("queued", "running")))
                .group_by(Job.status)
            ).all()
        )
        pending = s.scalar(
            select(func.count()).where(CallbackDelivery.state == "pending")
        ) or 0
        retryable = s.scalar(
            select(func.count()).where(Job.status == "failed", Job.retryable.is_(True))
        ) or 0
        recent = s.execute(
            select(Job.status, Job.error_code, func.count())
            .where(Job.finished_at >= now - timedelta(minutes=15))
            .group_by(Job.status, Job.error_code)
        ).all()
    age = 0.0
    if oldest is not None:
        if oldest.tzinfo is None:  # SQLite returns naive UTC
            oldest = oldest.replace(tzinfo=now.tzinfo)
        age = max(0.0, (now - oldest).total_seconds())
    STUCK.set(stuck)
    OLDEST.set(age)
    for status in ("queued", "running"):
        NONTERMINAL.labels(status).set(by_status.get(status, 0))
    PENDING_CALLBACKS.set(pending)
    RETRYABLE.set(retryable)
    FINISHED_RECENT.clear()
    for status, code, count in recent:
        FINISHED_RECENT.labels(status, code or "").set(count)
    return {
        "stuck": float(stuck), "oldest_nonterminal_age_s": age, "pending_callbacks": float(pending),
        "failed_retryable": float(retryable),
    }


def queue_depths(broker_url: str, queues: Sequence[str]) -> dict[str, int]:
    """Messages waiting per queue (AMQP: a passive declare); sets ``earshot_queue_depth``."""
    import kombu

    depths: dict[str, int] = {}
    with kombu.Connection(broker_url, connect_timeout=5) as conn:
        for name in queues:
            channel = conn.channel()
            try:
                depths[name] = int(channel.queue_declare(queue=name, passive=True).message_count)
            except conn.channel_errors:
                depths[name] = 0
            finally:
                try:
                    channel.close()
                except Exception:
                    pass
    for name, depth in depths.items():
        QUEUE_DEPTH.labels(name).set(depth)
    return depths
