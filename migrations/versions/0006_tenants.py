"""tenants: every key, job and conversation belongs to one; idempotency keys are per tenant

Revision ID: 0006_tenants
Revises: 0002_api, 0005_conversations
Create Date: 2026-11-29 17:10:00

- table ``tenants`` (allowed source patterns, quotas) with the row ``default``, which owns
  every existing key, job and conversation (``server_default``);
- ``api_keys.tenant_id``, ``jobs.tenant_id``, ``conversations.tenant_id`` (FK to tenants);
- ``jobs.request_fingerprint``; the idempotency key is unique per tenant, not globally;
- PostgreSQL: each ``analytics`` view gains a last column ``tenant_id`` (appended, so the
  documented columns keep their order).

It alters tables of 0002_api (api_keys, views) and 0005_conversations, so it follows both (a
``depends_on`` on a branch from 0001 trips Alembic's head bookkeeping on upgrade).
Written out here, not imported, so it stays what it was when the models change.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006_tenants"
down_revision: str | Sequence[str] | None = ("0002_api", "0005_conversations")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT = "default"
SCHEMA = "analytics"
READER_ROLE = "earshot_reader"

# the views as 0002_api created them; the tenant column is appended before FROM
VIEWS_0002: dict[str, str] = {
    "jobs": """
        SELECT j.id AS job_id, j.status, j.source_uri, a.bucket, a.key, a.version,
               j.tasks::jsonb AS tasks, j.questions::jsonb AS questions, j.engine, j.model_id,
               j.progress, j.segment_count, j.attempts, j.error_code, j.error_message,
               a.duration_s, a.size_bytes, a.format,
               j.created_at, j.started_at, j.finished_at,
               EXTRACT(EPOCH FROM (j.finished_at - j.started_at))::double precision AS processing_s
        FROM public.jobs j JOIN public.audio_files a ON a.id = j.audio_file_id""",
    "transcripts": """
        SELECT u.id AS utterance_id, u.job_id, j.source_uri, j.created_at AS job_created_at,
               u.segment_index, u.seq, u.start_s, u.end_s, u.end_s - u.start_s AS duration_s,
               u.text, u.search_tsv AS tsv
        FROM public.utterances u JOIN public.jobs j ON j.id = u.job_id""",
    "summaries": """
        SELECT s.id AS summary_id, s.job_id, j.source_uri, j.created_at AS job_created_at,
               s.level, s.idx, s.start_s, s.end_s, s.title, s.text, s.search_tsv AS tsv
        FROM public.summaries s JOIN public.jobs j ON j.id = s.job_id""",
    "events": """
        SELECT e.id AS event_id, e.job_id, j.source_uri, j.created_at AS job_created_at,
               e.segment_index, e.seq, e.label, e.start_s, e.end_s,
               e.end_s - e.start_s AS duration_s, e.raw
        FROM public.events e JOIN public.jobs j ON j.id = e.job_id""",
    "reasoning": """
        SELECT r.id AS trace_id, r.job_id, j.source_uri, j.created_at AS job_created_at,
               r.segment_index, r.seq, r.question, r.thinking, r.answer, r.adapter
        FROM public.reasoning_traces r JOIN public.jobs j ON j.id = r.job_id""",
    "speech": """
        SELECT o.id AS speech_id, o.job_id, j.source_uri, o.kind, o.uri, o.duration_s,
               o.voice, o.sample_rate
        FROM public.speech_outputs o JOIN public.jobs j ON j.id = o.job_id""",
}


def _with_tenant(body: str) -> str:
    head, sep, tail = body.partition("\n        FROM public.")
    assert sep, body
    return f"{head}, j.tenant_id{sep}{tail}"


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _tenant_column() -> sa.Column[str]:
    return sa.Column("tenant_id", sa.String(length=64), server_default=DEFAULT, nullable=False)


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("allowed_sources", sa.JSON(), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("max_audio_hours_per_day", sa.Float(), nullable=True),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tenants"),
    )
    # the default tenant reads no caller-named sources until an operator allows some
    op.bulk_insert(
        tenants,
        [{
            "id": DEFAULT, "name": "Default tenant", "allowed_sources": [],
            "max_concurrent_jobs": 16, "max_audio_hours_per_day": 24.0,
            "requests_per_minute": 600, "created_at": datetime.now(UTC),
        }],
    )

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(_tenant_column())
        batch_op.create_index("ix_api_keys_tenant_id", ["tenant_id"], unique=False)
        batch_op.create_foreign_key("fk_api_keys_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(_tenant_column())
        batch_op.add_column(sa.Column("request_fingerprint", sa.String(length=64), nullable=True))
        batch_op.drop_constraint("uq_jobs_idempotency_key", type_="unique")
        batch_op.create_unique_constraint(
            "uq_jobs_tenant_idempotency_key", ["tenant_id", "idempotency_key"]
        )
        batch_op.create_index("ix_jobs_tenant_status", ["tenant_id", "status"], unique=False)
        batch_op.create_foreign_key("fk_jobs_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.add_column(_tenant_column())
        batch_op.create_index("ix_conversations_tenant_id", ["tenant_id"], unique=False)
        batch_op.create_foreign_key(
            "fk_conversations_tenant_id_tenants", "tenants", ["tenant_id"], ["id"]
        )

    if _postgres():
        for name, body in VIEWS_0002.items():
            op.execute(f"CREATE OR REPLACE VIEW {SCHEMA}.{name} AS {_with_tenant(body)}")


def downgrade() -> None:
    if _postgres():
        # a view cannot lose a column in place: drop, recreate as 0002 left it, grant again
        for name, body in VIEWS_0002.items():
            op.execute(f"DROP VIEW IF EXISTS {SCHEMA}.{name}")
            op.execute(f"CREATE VIEW {SCHEMA}.{name} AS {body}")
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER_ROLE}') THEN
                    EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {READER_ROLE}';
                END IF;
            END
            $$"""
        )

    with op.batch_alter_table("conversations", schema=None) as batch_op:
        batch_op.drop_constraint("fk_conversations_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_index("ix_conversations_tenant_id")
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint("fk_jobs_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_index("ix_jobs_tenant_status")
        batch_op.drop_constraint("uq_jobs_tenant_idempotency_key", type_="unique")
        # keys of different tenants may collide by now; the global constraint cannot return then
        batch_op.create_unique_constraint("uq_jobs_idempotency_key", ["idempotency_key"])
        batch_op.drop_column("request_fingerprint")
        batch_op.drop_column("tenant_id")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint("fk_api_keys_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_index("ix_api_keys_tenant_id")
        batch_op.drop_column("tenant_id")

    op.drop_table("tenants")
