"""Outage or verdict? How a failed step is classified, and the backoff between retries.

- A *verdict* (:class:`~earshot.errors.EarshotError` that is not retryable: bad input, a
  refused callback URL) ends the job at once.
- An *outage* (the database, the broker, the object store or the inference server cannot be
  reached) is retried with jittered backoff over ``EARSHOT_TASK_RETRY_WINDOW_S``; if it lasts
  longer, the job fails with ``retryable`` set and the sweeper retries it later.
- Anything else is a bug or an unknown: retried ``EARSHOT_TASK_MAX_RETRIES`` times.
"""

from __future__ import annotations

import random

from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import exc as sa_exc

from earshot.errors import EarshotError, InputError

__all__ = ["OUTAGE_CODES", "Superseded", "backoff_s", "outage_code"]

# every code a job can fail with on an outage; documented in docs/architecture.md
OUTAGE_CODES = ("database_unavailable", "broker_unavailable", "storage_error", "engine_unavailable")


def outage_code(exc: BaseException) -> str | None:
    """The outage code of a transient failure, or None for a verdict or a bug."""
    if isinstance(exc, EarshotError):
        return exc.code if exc.retryable else None
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
        return "database_unavailable"
    if isinstance(exc, sa_exc.TimeoutError):  # the connection pool is exhausted or hung
        return "database_unavailable"
    if isinstance(exc, BrokerError):
        return "broker_unavailable"
    if isinstance(exc, ConnectionError | TimeoutError):
        return "broker_unavailable"
    return None


def backoff_s(attempt: int, base: float, cap: float) -> float:
    """Full jitter (AWS architecture blog): uniform in [base/2, min(cap, base * 2^attempt)].

    Spreads retries of many tasks that failed together in one outage.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 30))
    return random.uniform(min(base / 2, ceiling), ceiling)


class Superseded(InputError):
    """The object version a job was created for is gone or was overwritten before it was read.

    Not a failure of the input: the job ends ``superseded`` (the newer version has its own
    job), with this reason in ``error_message``.
    """

    code = "superseded"
