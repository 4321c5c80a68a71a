"""The analyst surface: views and the read-only role ``earshot_reader`` (migration 0002_api).

Each check runs in its own transaction with ``SET LOCAL ROLE earshot_reader``, as docs/sql.md
shows. The example queries are read out of docs/sql.md, so the documentation stays runnable.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from earshot.db.base import utcnow

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
VIEWS = ("jobs", "transcripts", "summaries", "events", "reasoning", "speech")


def doc_queries() -> dict[str, str]:
    text = DOC.read_text()
    return dict(re.findall(r"<!-- query: (\w+) -->\s*```sql\n(.*?)```", text, flags=re.S))


@pytest.fixture
def conn(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as c:
        yield c


def as_reader(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL ROLE earshot_reader")
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def test_role_is_nologin(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'earshot_reader'").fetchone()
    assert row == (False, False)


def test_reader_selects_views_and_nothing_else(
    conn: psycopg.Connection[Any], seeded: Callable[..., str], tmp_path: Path
) -> None:
    job = seeded(
        utterances=[(1.0, 2.0, "hello reader")],
        summaries=[("file", 0, 0.0, 2.0, None, "a greeting")],
        events=[(0.5, 1.0, "click")],
        traces=[(-1, "q?", "t", "a", False)],
        speech_uri=(tmp_path / "s.wav").as_uri(),
    )
    for view in VIEWS:
        rows = as_reader(conn, f"SELECT * FROM analytics.{view} WHERE job_id = %s", (job,))
        assert len(rows) == 1, view

    denied = [
        "SELECT * FROM public.jobs LIMIT 1",
        "SELECT * FROM public.utterances LIMIT 1",
        "SELECT * FROM public.api_keys LIMIT 1",
        "SELECT * FROM public.alembic_version",
        "UPDATE public.jobs SET status = 'failed'",
        f"INSERT INTO public.events (job_id, segment_index, seq, label, start_s, end_s) VALUES ('{job}', 0, 9, 'x', 0, 1)",
        "DELETE FROM public.utterances",
        "TRUNCATE public.events",
        "CREATE TABLE public.reader_was_here (x int)",
        "CREATE TABLE analytics.reader_was_here (x int)",
        "CREATE VIEW analytics.mine AS SELECT 1",
        "DROP VIEW analytics.events",
    ]
    for sql in denied:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_reader(conn, sql)

    # the views join tables, so PostgreSQL refuses writes to them even before the privilege
    # check; the role has no write privilege on them either way
    for sql in (
        f"INSERT INTO analytics.events (job_id, label) VALUES ('{job}', 'x')",
        "UPDATE analytics.jobs SET status = 'failed'",
        "DELETE FROM analytics.transcripts",
    ):
        with pytest.raises((psycopg.errors.InsufficientPrivilege, psycopg.errors.ObjectNotInPrerequisiteState)):
            as_reader(conn, sql)
    grants = conn.execute(
        """SELECT n.nspname, c.relname, p.priv,
                  has_table_privilege('earshot_reader', c.oid, p.priv)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', 'TRIGGER']) AS p(priv)
           WHERE n.nspname IN ('public', 'analytics') AND c.relkind IN ('r', 'v', 'p')"""
    ).fetchall()
    allowed = {(n, r, p) for n, r, p, ok in grants if ok}
    assert allowed == {("analytics", v, "SELECT") for v in VIEWS}


def test_documented_queries_run_as_reader(conn: psycopg.Connection[Any], seeded: Callable[..., str]) -> None:
    queries = doc_queries()
    assert {"siren_last_week", "jobs_mentioning_word", "ranked_phrase", "jobs_per_day", "yes_answers"} <= set(queries)

    now = utcnow()
    recent = seeded(events=[(10.0, 17.5, "Siren"), (30.0, 33.0, "siren"), (40.0, 50.0, "dog")],
                    created_at=now - timedelta(days=2))
    old = seeded(events=[(10.0, 30.0, "siren")], created_at=now - timedelta(days=20))
    rows = as_reader(conn, queries["siren_last_week"])
    mine = [(r[0], r[2], r[3]) for r in rows if r[0] in (recent, old)]
    assert mine == [(recent, "Siren", 10.0)]

    tag = uuid.uuid4().hex[:6]
    said_twice = seeded(utterances=[(5.0, 6.0, f"I want a refund {tag}"), (60.0, 61.0, "the refund was refunded")])
    said_once = seeded(utterances=[(7.0, 8.0, "Refunds take a week")])
    never = seeded(utterances=[(1.0, 2.0, "no money talk")])
    rows = as_reader(conn, queries["jobs_mentioning_word"])
    found = {r[0]: (r[2], r[3]) for r in rows}
    assert found[said_twice] == (5.0, 2) and found[said_once] == (7.0, 1) and never not in found

    seeded(utterances=[(3.0, 4.0, "this is a refund request for order 12")])
    ranked = as_reader(conn, queries["ranked_phrase"])
    assert ranked and all("[refund] [request]" in r[3] for r in ranked)

    assert as_reader(conn, queries["jobs_per_day"])
    answered = seeded(traces=[(-1, "Was it loud?", "...", "Yes, very.", True)])
    assert any(r[0] == answered for r in as_reader(conn, queries["yes_answers"]))


def test_search_columns_follow_writes(conn: psycopg.Connection[Any], seeded: Callable[..., str]) -> None:
    word = "zq" + uuid.uuid4().hex[:8]
    job = seeded(utterances=[(0.0, 1.0, "before")])
    conn.execute("UPDATE utterances SET text = %s WHERE job_id = %s", (f"after {word}", job))
    conn.commit()
    rows = as_reader(conn, "SELECT job_id FROM analytics.transcripts WHERE tsv @@ plainto_tsquery('english', %s)", (word,))
    assert rows == [(job,)]
