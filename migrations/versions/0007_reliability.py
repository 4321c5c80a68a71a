"""reliability: job leases, retryable infrastructure failures, settled side effects

Revision ID: 0007_reliability
Revises: 0003_ingest
Create Date: 2026-11-29 17:00:00

Hand-written; the same DDL runs on PostgreSQL and SQLite (batch mode).

- ``jobs.heartbeat_at``: the lease of the running step; the sweeper re-enqueues a
  non-terminal job whose lease is older than ``EARSHOT_JOB_STALE_AFTER_S``.
- ``jobs.retryable``: the job failed on an outage (storage, database, broker, engine), not on
  its input; the sweeper and the reconciler retry it.
- ``jobs.settled_at``: the side effects of a terminal job (scratch deleted, callback sent to
  the queue, dead letters resolved) were done. NULL on a terminal job means "still to do".
- ``ingest_dead_letters.resolved_at``: the object's job succeeded after all.
- ``callback_deliveries.next_attempt_at``: when the sweeper may send a pending callback again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_reliability"
down_revision: str | Sequence[str] | None = "0003_ingest"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(_ts("heartbeat_at"))
        batch.add_column(_ts("settled_at"))
        batch.add_column(
            sa.Column("retryable", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    # terminal jobs that exist before this migration have nothing left to settle
    op.execute(
        "UPDATE jobs SET settled_at = finished_at "
        "WHERE status IN ('succeeded', 'failed', 'cancelled')"
    )
    with op.batch_alter_table("ingest_dead_letters") as batch:
        batch.add_column(_ts("resolved_at"))
    with op.batch_alter_table("callback_deliveries") as batch:
        batch.add_column(_ts("next_attempt_at"))


def downgrade() -> None:
    with op.batch_alter_table("callback_deliveries") as batch:
        batch.drop_column("next_attempt_at")
    with op.batch_alter_table("ingest_dead_letters") as batch:
        batch.drop_column("resolved_at")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retryable")
        batch.drop_column("settled_at")
        batch.drop_column("heartbeat_at")
