"""Idempotency keys are per tenant, and bound to the request they first came with.

A repeat with the same body returns the first job; a repeat with another body is a conflict
(409, as Stripe answers), never someone else's job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from earshot.tenants.errors import IdempotencyConflict

if TYPE_CHECKING:
    from earshot.db.models import Job

__all__ = ["find_idempotent", "fingerprint"]


def fingerprint(payload: Mapping[str, Any]) -> str:
    """SHA-256 of the request in canonical JSON (sorted keys; sequences keep their order)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def find_idempotent(
    session: Session, tenant_id: str, key: str, request_fingerprint: str | None
) -> Job | None:
    """The tenant's job created with ``key``; ``IdempotencyConflict`` if its request differed."""
    from earshot.db.models import Job  # db.models imports this package

    job = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))
    if job is None:
        return None
    stored = job.request_fingerprint
    if stored is not None and request_fingerprint is not None and stored != request_fingerprint:
        raise IdempotencyConflict(
            "this Idempotency-Key was used with a different request; use a new key"
        )
    return job
