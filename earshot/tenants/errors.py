"""Typed refusals of the tenant perimeter. Each carries a stable ``code`` the API maps to a status."""

from __future__ import annotations

from earshot.errors import EarshotError, InputError

__all__ = [
    "IdempotencyConflict",
    "QuotaExceeded",
    "RateLimited",
    "SourceNotAllowed",
    "UnknownTenant",
    "source_unavailable",
]


class SourceNotAllowed(InputError):
    """A source the tenant may not read, or one that does not exist: callers cannot tell which."""

    code = "source_not_found"


def source_unavailable(uri: str) -> SourceNotAllowed:
    """The one answer for a denied and a missing object (existence must not leak)."""
    shown = uri if len(uri) <= 300 else uri[:300] + "..."
    return SourceNotAllowed(f"cannot read {shown}: no such object, or this key may not read it")


class QuotaExceeded(EarshotError):
    """The tenant is over a quota; ``retry_after_s`` says when trying again can succeed."""

    code = "quota_exceeded"
    retryable = True

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = max(1, int(retry_after_s))


class RateLimited(QuotaExceeded):
    code = "rate_limited"


class IdempotencyConflict(InputError):
    """An Idempotency-Key reused with a different request body."""

    code = "idempotency_conflict"


class UnknownTenant(InputError):
    code = "unknown_tenant"
