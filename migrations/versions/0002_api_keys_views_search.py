"""api keys, analyst views, read-only role, full-text search columns

Revision ID: 0002_api
Revises: 0001
Create Date: 2026-11-26 12:00:00

Both dialects get the ``api_keys`` table. PostgreSQL also gets:

- ``search_tsv`` generated tsvector columns on ``utterances`` and ``summaries`` with GIN
  indexes (the REST search; SQLite falls back to LIKE);
- schema ``analytics`` with the documented views ``jobs``, ``transcripts``, ``summaries``,
  ``events``, ``reasoning`` and ``speech`` (see docs/sql.md; their columns are a contract);
- the NOLOGIN role ``earshot_reader`` (cluster-wide, so created only if missing) with USAGE on
  ``analytics`` and SELECT on its views, nothing else.

The view and column definitions are written out here, not imported, so this migration stays
what it was when later code changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_api"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS_CONFIG = "english"
READER_ROLE = "earshot_reader"
SCHEMA = "analytics"

VIEWS: dict[str, str] = {
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


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_prefix"), ["prefix"], unique=False)

    if not _postgres():
        return

    # ---- full-text search: stored tsvectors, kept current by PostgreSQL itself
    op.execute(
        f"ALTER TABLE utterances ADD COLUMN search_tsv tsvector "
        f"GENERATED ALWAYS AS (to_tsvector('{TS_CONFIG}', text)) STORED"
    )
    op.execute(
        f"ALTER TABLE summaries ADD COLUMN search_tsv tsvector GENERATED ALWAYS AS ("
        f"setweight(to_tsvector('{TS_CONFIG}', coalesce(title, '')), 'A') || "
        f"setweight(to_tsvector('{TS_CONFIG}', text), 'B')) STORED"
    )
    op.execute("CREATE INDEX ix_utterances_search_tsv ON utterances USING gin (search_tsv)")
    op.execute("CREATE INDEX ix_summaries_search_tsv ON summaries USING gin (search_tsv)")
    # events are filtered by label across jobs ("every siren event")
    op.execute("CREATE INDEX ix_events_label_lower ON events (lower(label))")

    # ---- analyst views
    op.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {SCHEMA}.{name} AS {body}")
    op.execute(
        f"COMMENT ON SCHEMA {SCHEMA} IS 'Stable read-only views over Earshot results (docs/sql.md)'"
    )

    # ---- the read-only role. Roles are cluster-wide: several databases (tests, staging) may
    # run this migration, even at the same moment, so creation tolerates an existing role.
    op.execute(
        f"""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER_ROLE}') THEN
                CREATE ROLE {READER_ROLE} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END
        $$"""
    )
    op.execute(f"GRANT USAGE ON SCHEMA {SCHEMA} TO {READER_ROLE}")
    op.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {SCHEMA} TO {READER_ROLE}")


def downgrade() -> None:
    if _postgres():
        op.execute(
            f"""
            DO $$
            BEGIN
                IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{READER_ROLE}') THEN
                    EXECUTE 'REVOKE ALL ON ALL TABLES IN SCHEMA {SCHEMA} FROM {READER_ROLE}';
                    EXECUTE 'REVOKE ALL ON SCHEMA {SCHEMA} FROM {READER_ROLE}';
                END IF;
            END
            $$"""
        )
        op.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        # Other databases of the cluster may still grant to the role: then it stays.
        op.execute(
            f"""
            DO $$
            BEGIN
                DROP ROLE IF EXISTS {READER_ROLE};
            EXCEPTION WHEN dependent_objects_still_exist OR object_in_use THEN
                RAISE NOTICE 'role {READER_ROLE} is still used elsewhere; kept';
            END
            $$"""
        )
        op.execute("DROP INDEX IF EXISTS ix_events_label_lower")
        op.execute("DROP INDEX IF EXISTS ix_summaries_search_tsv")
        op.execute("DROP INDEX IF EXISTS ix_utterances_search_tsv")
        op.execute("ALTER TABLE summaries DROP COLUMN IF EXISTS search_tsv")
        op.execute("ALTER TABLE utterances DROP COLUMN IF EXISTS search_tsv")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_prefix"))
    op.drop_table("api_keys")
