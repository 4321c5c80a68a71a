"""Dead letters: what the bridge could not turn into a job, with the reason, kept in the database.

A dead letter is written *before* the message is acknowledged, so nothing vanishes silently.
`earshot ingest dead-letters` lists them; `earshot ingest replay ID` feeds one back through the
bridge (after the cause was fixed, e.g. a bucket added to EARSHOT_INGEST_BUCKETS). A dead
letter whose object got a successful job later (after an outage, by the reconciler, a
replay) is marked resolved by :func:`resolve_dead_letters` (the sweeper runs it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exists, func, literal, select, update
from sqlalchemy.orm import Session

from earshot.db.base import utcnow
from earshot.db.models import Job
from earshot.ingest.models import DeadLetter

__all__ = [
    "MAX_BODY_CHARS",
    "list_dead_letters",
    "mark_replayed",
    "pending_count",
    "record_dead_letter",
    "resolve_dead_letters",
]

MAX_BODY_CHARS = 256 * 1024


def _text(body: bytes | str | Mapping[str, Any]) -> str:
    if isinstance(body, bytes):
        text = body.decode("utf-8", errors="replace")
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, default=str)
    # PostgreSQL text cannot hold NUL
    return text.replace("\x00", "\\u0000")[:MAX_BODY_CHARS]


def record_dead_letter(
    session: Session,
    *,
    source: str,
    reason: str,
    detail: str,
    body: bytes | str | Mapping[str, Any],
    message_id: str | None = None,
    bucket: str | None = None,
    key: str | None = None,
) -> DeadLetter:
    row = DeadLetter(
        source=source[:255],
        message_id=(message_id or None) and str(message_id)[:255],
        reason=reason[:64],
        detail=detail.replace("\x00", "")[:4000],
        bucket=bucket[:255] if bucket else None,
        key=key.replace("\x00", "") if key else None,
        body=_text(body),
    )
    session.add(row)
    session.flush()
    return row


def list_dead_letters(
    session: Session, *, limit: int = 50, reason: str | None = None, include_replayed: bool = True
) -> list[DeadLetter]:
    q = select(DeadLetter)
    if reason:
        q = q.where(DeadLetter.reason == reason)
    if not include_replayed:
        q = q.where(DeadLetter.replayed_at.is_(None), DeadLetter.resolved_at.is_(None))
    return list(session.scalars(q.order_by(DeadLetter.created_at.desc(), DeadLetter.id).limit(limit)))


def mark_replayed(session: Session, dead_letter_id: str) -> None:
    row = session.get(DeadLetter, dead_letter_id)
    if row is not None:
        row.replayed_at = utcnow()


def resolve_dead_letters(session: Session) -> int:
    """Mark resolved every open dead letter whose object has a job that succeeded after it."""
    succeeded = exists().where(
        Job.source_uri == literal("s3://") + DeadLetter.bucket + "/" + DeadLetter.key,
        Job.status == "succeeded",
        Job.finished_at >= DeadLetter.created_at,
    )
    result = session.execute(
        update(DeadLetter)
        .where(
            DeadLetter.resolved_at.is_(None), DeadLetter.replayed_at.is_(None),
            DeadLetter.bucket.is_not(None), DeadLetter.key.is_not(None), succeeded,
        )
        .values(resolved_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def pending_count(session: Session) -> int:
    return int(
        session.scalar(
            select(func.count()).where(DeadLetter.replayed_at.is_(None), DeadLetter.resolved_at.is_(None))
        )
        or 0
    )
