"""The callback outbox: a row written with the job's final status, delivered at least once.

- URL: the job's ``callback_url`` (API field), else ``EARSHOT_CALLBACK_URL``.
- Body: compact JSON ``{"job_id": "...", "status": "succeeded"|"failed"|"superseded"|...}``.
- Headers: ``X-Earshot-Signature: sha256=<hex HMAC-SHA256 of the raw body, key
  EARSHOT_CALLBACK_SECRET>``, ``X-Earshot-Delivery`` (stable per job and status),
  ``X-Earshot-Attempt``.
- :func:`record_callback` runs inside the transaction that makes the job terminal, so a
  worker lost right after that commit cannot lose the callback: the redelivered task, or the
  sweeper, finds the ``pending`` row and sends it.
- Any 2xx ends it; 408/425/429/5xx and network errors are retried with exponential backoff
  (``EARSHOT_CALLBACK_BACKOFF_S`` * 2^(attempt-1), capped at an hour, +-20% jitter) up to
  ``EARSHOT_CALLBACK_MAX_ATTEMPTS``; other 4xx, 3xx (redirects are not followed) and refused
  URLs (:mod:`earshot.callbacks.ssrf`) give up at once. Only the status code is stored, never
  the receiver's body.
- Unsigned callbacks are never sent: with callbacks on and no secret, :func:`require_secret`
  refuses to start the worker, and :func:`deliver` refuses the attempt.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import timedelta

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from earshot.callbacks.models import CallbackDelivery
from earshot.callbacks.signing import SIGNATURE_HEADER, sign
from earshot.callbacks.ssrf import CallbackRefused, PinnedTransport, check_callback_url
from earshot.config import Settings
from earshot.db.base import utcnow
from earshot.db.models import Job
from earshot.db.session import session_scope
from earshot.errors import ConfigError

__all__ = [
    "MAX_BACKOFF_S",
    "Attempt",
    "backoff_s",
    "callback_body",
    "callback_client",
    "deliver",
    "pending_deliveries",
    "record_callback",
    "require_secret",
]

log = logging.getLogger("earshot.callbacks")

_RETRY_CODES = frozenset({408, 425, 429})
MAX_BACKOFF_S = 3600.0


def require_secret(settings: Settings) -> None:
    """Refuse to start a process that would send callbacks without a signing secret."""
    if settings.callback_url and not settings.callback_secret:
        raise ConfigError(
            "EARSHOT_CALLBACK_URL is set but EARSHOT_CALLBACK_SECRET is not: callbacks must be signed",
            code="config_error",
        )


def callback_body(job_id: str, status: str) -> bytes:
    return json.dumps({"job_id": job_id, "status": status}, separators=(",", ":")).encode()


def backoff_s(attempt: int, base: float, *, jitter: bool = True) -> float:
    """Delay before attempt ``attempt + 1`` (attempt counts from 1)."""
    delay = min(MAX_BACKOFF_S, base * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.8, 1.2) if jitter else delay


def record_callback(session: Session, job: Job, *, settings: Settings | None) -> CallbackDelivery | None:
    """Add the callback of a job that is becoming terminal, in the caller's transaction.

    No URL, or one already recorded for this status: nothing new. ``settings`` None means
    "the job's own URL only" (callers without configuration, e.g. an API enqueue failure).
    """
    url = job.callback_url or (settings.callback_url if settings is not None else None)
    if not url:
        return None
    existing = session.scalar(
        select(CallbackDelivery).where(
            CallbackDelivery.job_id == job.id, CallbackDelivery.status == job.status
        )
    )
    if existing is not None:
        return existing
    row = CallbackDelivery(
        job_id=job.id, status=job.status, url=url, state="pending", attempts=0,
        next_attempt_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def pending_deliveries(session: Session, job_id: str) -> list[str]:
    return list(
        session.scalars(
            select(CallbackDelivery.id).where(
                CallbackDelivery.job_id == job_id, CallbackDelivery.state == "pending"
            )
        )
    )


@dataclass(frozen=True)
class Attempt:
    delivered: bool
    retry_in_s: float | None = None  # None and not delivered: given up
    status_code: int | None = None
    error: str | None = None


def callback_client(settings: Settings) -> httpx.Client:
    """An HTTP client that connects only to checked addresses and never follows redirects."""
    return httpx.Client(
        transport=PinnedTransport(settings), timeout=settings.callback_timeout_s, follow_redirects=False
    )


def _post(
    url: str, body: bytes, headers: dict[str, str], settings: Settings, client: httpx.Client | None
) -> tuple[int | None, str | None, bool]:
    """(status code, error, permanent)."""
    try:
        check_callback_url(url, settings=settings)
        if client is None:
            with callback_client(settings) as own:
                response = own.post(url, content=body, headers=headers)
        else:
            response = client.post(url, content=body, headers=headers)
    except CallbackRefused as exc:
        return None, f"refused: {exc.message}", True
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}", False
    code = response.status_code
    response.close()
    if 200 <= code < 300:
        return code, None, False
    permanent = (300 <= code < 500) and code not in _RETRY_CODES
    return code, f"HTTP {code}", permanent


def deliver(delivery_id: str, settings: Settings, *, client: httpx.Client | None = None) -> Attempt:
    """Make one attempt; the caller schedules the next one after ``retry_in_s``.

    Database errors propagate: the caller retries the whole attempt later.
    """
    with session_scope(settings.database_url) as s:
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
        code, error, permanent = _post(url, body, headers, settings, client)
    else:
        code, error, permanent = None, "refused: EARSHOT_CALLBACK_SECRET is not set", True

    delivered = error is None
    give_up = not delivered and (permanent or attempt >= settings.callback_max_attempts)
    delay = None if delivered or give_up else backoff_s(attempt, settings.callback_backoff_s)
    with session_scope(settings.database_url) as s:
        row = s.get(CallbackDelivery, delivery_id, with_for_update=True)
        if row is None:
            return Attempt(delivered=False, error="no such delivery")
        row.attempts = max(row.attempts, attempt)
        row.last_status_code = code
        row.last_error = error
        if delivered:
            row.state = "delivered"
            row.delivered_at = utcnow()
            row.next_attempt_at = None
        elif give_up:
            row.state = "failed"
            row.next_attempt_at = None
        else:
            assert delay is not None
            row.next_attempt_at = utcnow() + timedelta(seconds=delay)
    if delivered:
        log.info("callback for job %s (%s) delivered", job_id, status)
        return Attempt(delivered=True, status_code=code)
    if give_up:
        log.warning("callback for job %s given up after %d attempt(s): %s", job_id, attempt, error)
        return Attempt(delivered=False, status_code=code, error=error)
    log.info("callback for job %s failed (%s); retry %d in %.1f s", job_id, error, attempt + 1, delay)
    return Attempt(delivered=False, retry_in_s=delay, status_code=code, error=error)
