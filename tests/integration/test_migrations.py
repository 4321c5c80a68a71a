"""Alembic history up and down on a real PostgreSQL and on SQLite."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, inspect

from earshot.db import migrate
from tests.fixtures.earshot import PG_ADMIN

CORE = {"audio_files", "jobs", "segments", "utterances", "summaries", "events", "reasoning_traces", "speech_outputs"}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgres_migrates_up_down_and_up_again() -> None:
    name = f"earshot_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        migrate.upgrade("heads", url=url)
        assert CORE <= _tables(url)
        migrate.downgrade("base", url=url)
        assert _tables(url) <= {"alembic_version"}
        migrate.upgrade("heads", url=url)
        assert CORE <= _tables(url)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_sqlite_migrates_up_and_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade("heads", url=url)
    assert CORE <= _tables(url)
    migrate.downgrade("base", url=url)
    assert _tables(url) <= {"alembic_version"}
