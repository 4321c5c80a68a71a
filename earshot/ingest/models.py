"""Ingest tables: which jobs were handed to the queue, and dead letters.

Migrations ``0003_ingest`` and ``0007_reliability`` (hand-written, PostgreSQL and SQLite).
Callback deliveries live in :mod:`earshot.callbacks.models`.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from earshot.db.base import Base, new_id, utcnow


class IngestReceipt(Base):
    """One row per job the ingest path created: the lock and marker of "process_job was sent".

    The job row and this row are committed together; the enqueue happens afterwards under a
    row lock, then ``enqueued_at`` is set. A redelivered event finds ``enqueued_at`` set and
    does nothing; a crash between the two commits leaves it NULL, and the next delivery (or
    the reconciler) enqueues the job.
    """

    __tablename__ = "ingest_receipts"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    source: Mapped[str] = mapped_column(String(255))
    # when S3 says the object was created (event time; last-modified for the reconciler)
    event_time: Mapped[datetime | None] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column()


class DeadLetter(Base):
    """A message (or one record of it) the bridge could not turn into a job, and why."""

    __tablename__ = "ingest_dead_letters"
    __table_args__ = (Index("ix_ingest_dead_letters_created", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    source: Mapped[str] = mapped_column(String(255))
    message_id: Mapped[str | None] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="")
    bucket: Mapped[str | None] = mapped_column(String(255))
    key: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    replayed_at: Mapped[datetime | None] = mapped_column()
    # migration 0007_reliability: the object's job succeeded later (after an outage, a replay)
    resolved_at: Mapped[datetime | None] = mapped_column()
