"""SQLAlchemy engine and session factory, keyed by URL so tests can point at several databases.

`db_engine` is the database connection pool; `earshot.engines.get_engine` is the inference engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from earshot.config import get_settings


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a worker writes; foreign keys give ON DELETE CASCADE.
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def ensure_sqlite_dir(url: str) -> None:
    """The directory of an embedded (SQLite file) database exists; other URLs are left alone."""
    if not url.startswith("sqlite"):
        return
    path = url.split("///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def prepare_sqlite(url: str, engine: Engine) -> None:
    """The embedded database's directory exists, and every connection gets WAL and foreign keys.

    ``engine`` is a sync engine (for an async one, pass its ``sync_engine``).
    """
    ensure_sqlite_dir(url)
    event.listen(engine, "connect", _sqlite_pragmas)


@lru_cache(maxsize=8)
def db_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        prepare_sqlite(url, engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


@lru_cache(maxsize=8)
def _factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=db_engine(url), expire_on_commit=False)


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    return _factory(url or get_settings().database_url)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Forget cached engines (after tests change EARSHOT_DATABASE_URL)."""
    db_engine.cache_clear()
    _factory.cache_clear()
