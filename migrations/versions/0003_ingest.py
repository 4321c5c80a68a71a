"""ingest: receipts (job enqueued?), dead letters, completion callback deliveries

Revision ID: 0003_ingest
Revises: 0001
Create Date: 2026-11-26 12:00:00

Hand-written; the same DDL runs on PostgreSQL and SQLite. The tables are described in
earshot/ingest/models.py; they are written out here so this migration stays what it was
when the models change.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_ingest"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "ingest_receipts",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        _ts("event_time"),
        _ts("received_at", nullable=False),
        _ts("enqueued_at"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_ingest_receipts_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_ingest_receipts"),
    )
    op.create_table(
        "ingest_dead_letters",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("bucket", sa.String(length=255), nullable=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("replayed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_ingest_dead_letters"),
    )
    op.create_index("ix_ingest_dead_letters_created", "ingest_dead_letters", ["created_at"])
    op.create_table(
        "callback_deliveries",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("delivered_at"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_callback_deliveries_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_callback_deliveries"),
        sa.UniqueConstraint("job_id", "status", name="uq_callback_deliveries_job_status"),
    )
    op.create_index("ix_callback_deliveries_job_id", "callback_deliveries", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_callback_deliveries_job_id", table_name="callback_deliveries")
    op.drop_table("callback_deliveries")
    op.drop_index("ix_ingest_dead_letters_created", table_name="ingest_dead_letters")
    op.drop_table("ingest_dead_letters")
    op.drop_table("ingest_receipts")
