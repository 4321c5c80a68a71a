"""The callback outbox table (migrations ``0003_ingest`` and ``0007_reliability``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from earshot.db.base import Base, new_id, utcnow


class CallbackDelivery(Base):
    """One completion callback: a job reached ``status``; POSTed until a 2xx or given up.

    Written in the transaction that makes the job terminal (an outbox), so a crash after that
    commit cannot lose it: the sweeper sends every row still ``pending``.
    """

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        UniqueConstraint("job_id", "status", name="uq_callback_deliveries_job_status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    # only the reason (network error, "HTTP 503"): a receiver's body is never stored
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column()
    next_attempt_at: Mapped[datetime | None] = mapped_column()
