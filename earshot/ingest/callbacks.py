"""Completion callbacks: when a job finishes, POST ``{"job_id", "status"}`` to its callback URL.

- URL: the job's ``callback_url`` (API field), else ``EARSHOT_CALLBACK_URL``.
- Body: compact JSON ``{"job_id": "...", "status": "succeeded"|"failed"}``.
- Headers: ``X-Earshot-Signature: sha256=<hex HMAC-SHA256 of the raw body, key
  EARSHOT_CALLBACK_SECRET>``, ``X-Earshot-Delivery`` (stable per job and status),
  ``X-Earshot-Attempt``.
- Delivery is at least once: any 2xx ends it; 408/425/429/5xx and network errors are
  retried with exponential backoff (``EARSHOT_CALLBACK_BACKOFF_S`` * 2^(attempt-1), capped at
  an hour, +-20% jitter) up to ``EARSHOT_CALLBACK_MAX_ATTEMPTS``; other 4xx give up at once.
  A receiver may see the same delivery twice and must be idempotent on (job_id, status) or
  on ``X-Earshot-Delivery``.

State lives in ``callback_deliveries`` (one row per job and final status), so a redelivered
``finalize_job`` does not schedule a second delivery. The Celery task that drives
:func:`deliver` is ``earshot.deliver_callback`` on the ``cpu`` queue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
from dataclasses import dataclass

import httpx
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from earshot.config import Settings
from earshot.db.base import utcnow
from earshot.db.models import TERMINAL_STATUSES, Job
from earshot.db.session import session_scope
from earshot.ingest.models import CallbackDelivery

__all__ = [
    "SIGNATURE_HEADER",
    "Attempt",
    "backoff_s",
    "callback_body",
    "deliver",
    "schedule",
    "sign",
    "verify",
]

log = logging.getLogger("earshot.callbacks")

SIGNATURE_HEADER = "X-Earshot-Signature"
_RETRY_CODES = frozenset({408, 425, 429})
MAX_BACKOFF_S = 3600.0


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, secret: str) -> bool:
    """What a receiver does: compare in constant time over the raw body bytes."""
    return bool(signature) and hmac.compare_digest(str(signature).encode(), sign(body, secret).encode())


def callback_body(job_id: str, status: str) -> bytes:
    return json.dumps({"job_id": job_id, "status": status}, separators=(",", ":")).encode()


def backoff_s(attempt: int, base: float, *, jitter: bool = True) -> float:
    """Delay before attempt ``attempt + 1`` (attempt counts from 1)."""
    delay = min(MAX_BACKOFF_S, base * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.8, 1.2) if jitter else delay


def schedule(job_id: str, settings: Settings) -> str | None:
    """Register the callback of a finished job; the delivery id to send, or None.

    A job with no URL, not finished, or whose callback for this status was already
    delivered or given up gets None.
    """
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.status not in TERMINAL_STATUSES:
            return None
        url = job.callback_url or settings.callback_url
        if not url:
            return None
        status = job.status
        existing = s.scalar(
            select(CallbackDelivery).where(
                CallbackDelivery.job_id == job_id, CallbackDelivery.status == status
            )
        )
        if existing is not None:
            return existing.id if existing.state == "pending" else None
        row = CallbackDelivery(job_id=job_id, status=status, url=url, state="pending", attempts=0)
        try:
            with s.begin_nested():
                s.add(row)
        except IntegrityError:
            return None  # scheduled a moment ago by a twin task, which sends it
        return row.id


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    retry_in_s: float | None = None  # None and not delivered: given up
    status_code: int | None = None
    error: str | None = None


def deliver(delivery_id: str, settings: Settings, *, client: httpx.Client | None = None) -> Attempt:
    """Make one attempt; the caller schedules the next one after ``retry_in_s``."""
    with session_scope() as s:
        row = s.get(CallbackDelivery, delivery_id)
        if row is None:
            return Attempt(delivered=False, error="no such delivery")
        if row.state != "pending":
            return Attempt(delivered=row.state == "delivered")
        url, job_id, status, attempt = row.url, row.job_id, row.status, row.attempts + 1

    body = callback_body(job_id, status)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "earshot-callback/1",
        "X-Earshot-Delivery": delivery_id,
        "X-Earshot-Attempt": str(attempt),
    }
    if settings.callback_secret:
        headers[SIGNATURE_HEADER] = sign(body, settings.callback_secret)
    code: int | None = None
    error: str | None = None
    try:
        if client is None:
            with httpx.Client(timeout=settings.callback_timeout_s) as own:
                response = own.post(url, content=body, headers=headers)
        else:
            response = client.post(url, content=body, headers=headers)
        code = response.status_code
        if not 200 <= code < 300:
            error = f"HTTP {code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"

    delivered = error is None
    permanent = code is not None and 400 <= code < 500 and code not in _RETRY_CODES
    give_up = not delivered and (permanent or attempt >= settings.callback_max_attempts)
    with session_scope() as s:
        row = s.get(CallbackDelivery, delivery_id, with_for_update=True)
        if row is None:
            return Attempt(delivered=False, error="no such delivery")
        row.attempts = max(row.attempts, attempt)
        row.last_status_code = code
        row.last_error = error
        if delivered:
            row.state = "delivered"
            row.delivered_at = utcnow()
        elif give_up:
            row.state = "failed"
    if delivered:
        log.info("callback for job %s (%s) delivered to %s", job_id, status, url)
        return Attempt(delivered=True, status_code=code)
    if give_up:
        log.warning("callback for job %s given up after %d attempt(s): %s", job_id, attempt, error)
        return Attempt(delivered=False, status_code=code, error=error)
    delay = backoff_s(attempt, settings.callback_backoff_s)
    log.info("callback for job %s failed (%s); retry %d in %.1f s", job_id, error, attempt + 1, delay)
    return Attempt(delivered=False, retry_in_s=delay, status_code=code, error=error)
