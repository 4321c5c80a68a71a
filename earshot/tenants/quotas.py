"""Per-tenant quotas (concurrent jobs, audio hours per rolling day) and request rate limits.

Each refusal is a :class:`QuotaExceeded` (or :class:`RateLimited`) with ``retry_after_s``: the
API answers 429 with ``Retry-After``. Quotas are counted in the database, so they hold across
API replicas; the rate limiter is an in-process token bucket, so with N API replicas a tenant
gets up to N times its ``requests_per_minute``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from earshot.db.base import utcnow
from earshot.tenants.errors import QuotaExceeded, RateLimited, UnknownTenant
from earshot.tenants.models import Tenant

__all__ = ["AUDIO_WINDOW", "RateLimiter", "audio_hours_used", "check_audio_budget", "check_quota"]

AUDIO_WINDOW = timedelta(hours=24)
ACTIVE_STATUSES = ("queued", "running")
# a busy tenant's next free slot is unknowable; this is how often retrying is reasonable
CONCURRENCY_RETRY_S = 30


def _tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = session.get(Tenant, tenant_id)
    if tenant is None:
        raise UnknownTenant(f"no tenant {tenant_id!r}")
    return tenant


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=utcnow().tzinfo)


def audio_hours_used(
    session: Session, tenant_id: str, *, now: datetime | None = None, exclude_job: str | None = None
) -> tuple[float, datetime | None]:
    """(hours of audio in the tenant's jobs created in the last 24 h, the oldest such job's time)."""
    from earshot.db.models import AudioFile, Job  # db.models imports this package

    since = (now or utcnow()) - AUDIO_WINDOW
    q = (
        select(func.coalesce(func.sum(AudioFile.duration_s), 0.0), func.min(Job.created_at))
        .select_from(Job)
        .join(AudioFile, AudioFile.id == Job.audio_file_id)
        .where(
            Job.tenant_id == tenant_id,
            Job.created_at >= since,
            AudioFile.duration_s.is_not(None),
        )
    )
    if exclude_job is not None:
        q = q.where(Job.id != exclude_job)
    seconds, oldest = session.execute(q).one()
    return float(seconds or 0.0) / 3600.0, oldest


def _window_retry_s(oldest: datetime | None, now: datetime) -> int:
    if oldest is None:
        return 3600
    return max(60, math.ceil((_aware(oldest) + AUDIO_WINDOW - now).total_seconds()))


def check_quota(session: Session, tenant_id: str, *, now: datetime | None = None) -> None:
    """Refuse a new job when the tenant is at its concurrency or daily-audio limit."""
    from earshot.db.models import Job  # db.models imports this package

    now = now or utcnow()
    tenant = _tenant(session, tenant_id)
    if tenant.max_concurrent_jobs is not None:
        active = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE_STATUSES))
        )
        if (active or 0) >= tenant.max_concurrent_jobs:
            raise QuotaExceeded(
                f"this tenant already has {active} jobs queued or running "
                f"(limit {tenant.max_concurrent_jobs}); retry when one finishes",
                retry_after_s=CONCURRENCY_RETRY_S,
            )
    if tenant.max_audio_hours_per_day is not None:
        used, oldest = audio_hours_used(session, tenant_id, now=now)
        if used >= tenant.max_audio_hours_per_day:
            raise QuotaExceeded(
                f"this tenant used {used:.1f} h of audio in the last 24 h "
                f"(limit {tenant.max_audio_hours_per_day:g} h)",
                retry_after_s=_window_retry_s(oldest, now),
            )


def check_audio_budget(
    session: Session, tenant_id: str, job_id: str, duration_s: float, *, now: datetime | None = None
) -> None:
    """For a worker once a file's length is known: would this job take the tenant past its day?"""
    now = now or utcnow()
    tenant = _tenant(session, tenant_id)
    if tenant.max_audio_hours_per_day is None:
        return
    used, oldest = audio_hours_used(session, tenant_id, now=now, exclude_job=job_id)
    if used + duration_s / 3600.0 > tenant.max_audio_hours_per_day:
        raise QuotaExceeded(
            f"this file ({duration_s / 3600.0:.2f} h) would take the tenant past its "
            f"{tenant.max_audio_hours_per_day:g} h of audio per day ({used:.2f} h used)",
            retry_after_s=_window_retry_s(oldest, now),
        )


class RateLimiter:
    """Token buckets per tenant: a burst of one minute's allowance, refilled continuously."""

    MAX_TENANTS = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def check(self, tenant_id: str, per_minute: int | None, *, now: float | None = None) -> None:
        if per_minute is None:
            return
        now = time.monotonic() if now is None else now
        rate = per_minute / 60.0
        with self._lock:
            tokens, at = self._buckets.pop(tenant_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - at) * rate)
            if tokens < 1.0:
                self._buckets[tenant_id] = (tokens, now)
                wait = math.inf if rate <= 0 else (1.0 - tokens) / rate
                raise RateLimited(
                    f"too many requests for this tenant (limit {per_minute} per minute)",
                    retry_after_s=60 if math.isinf(wait) else math.ceil(wait),
                )
            self._buckets[tenant_id] = (tokens - 1.0, now)
            while len(self._buckets) > self.MAX_TENANTS:
                self._buckets.popitem(last=False)
