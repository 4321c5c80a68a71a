"""The API's database: an async SQLAlchemy engine (psycopg 3 or aiosqlite), no thread hops.

The engine's connections are AUTOCOMMIT: each read statement stands alone, so a read request
costs its queries and nothing else (no BEGIN, no ROLLBACK when the connection goes back to the
pool, and so no reset on return either). Writes open a real transaction with ``transaction()``.

A request holds at most one connection of the main pool at a time, and key lookups (auth, on
a cache miss) use a small pool of their own. Otherwise requests that hold a connection and wait
for a second one for auth could take every connection and wait on each other for ever.

Sync library functions that only touch the database (``earshot.jobs.service``,
``earshot.auth``) run through ``run_sync`` on an async connection: SQLAlchemy drives them in a
greenlet on the event loop, so they need no thread either. A pooled connection is never held
while waiting for a thread, which is what deadlocked the sync routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import Session

from earshot.config import Settings

T = TypeVar("T")

POOL_SIZE = 30
MAX_OVERFLOW = 0


def async_url(url: str) -> str:
    """The same database through an asyncio driver."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return f"sqlite+aiosqlite{sep}{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+psycopg{sep}{rest}"
    return url


def create_engine(settings: Settings, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> AsyncEngine:
    url = async_url(settings.database_url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, isolation_level="AUTOCOMMIT", pool_reset_on_return=None
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(conn, _record):  # type: ignore[no-untyped-def]
            # WAL lets the API read while a worker writes; foreign keys give ON DELETE CASCADE.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # no pre-ping: it would cost a round trip per request; a dead connection fails one request
    # (503 database_unavailable) and is replaced, and pool_recycle retires old ones
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_recycle=1800,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        connect_args={"options": f"-c statement_timeout={int(settings.api_statement_timeout_ms)}"},
    )


class Database:
    """One engine per app and event loop (test clients may run the app in several loops)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engines: tuple[AsyncEngine, AsyncEngine] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Semaphore | None = None

    def _pair(self) -> tuple[AsyncEngine, AsyncEngine]:
        loop = asyncio.get_running_loop()
        if self._engines is None or self._loop is not loop:
            # a pool's connections belong to the loop that opened them
            self._engines = (create_engine(self.settings), create_engine(self.settings, pool_size=2, max_overflow=3))
            # First come, first served: SQLAlchemy's pool does not hand connections to waiters in
            # arrival order, so under load a few requests waited seconds while others passed
            # (bench/api.py: p99 0.9-5 s at c=64-256 with p50 ~22 ms). asyncio's semaphore is FIFO,
            # and with one permit per pooled connection the pool itself never makes anyone wait.
            self._gate = asyncio.Semaphore(POOL_SIZE + MAX_OVERFLOW)
            self._loop = loop
        return self._engines

    @property
    def engine(self) -> AsyncEngine:
        return self._pair()[0]

    async def dispose(self) -> None:
        if self._engines is not None and self._loop is asyncio.get_running_loop():
            for engine in self._engines:
                await engine.dispose()
        self._engines = self._loop = None

    @asynccontextmanager
    async def auth_reader(self) -> AsyncIterator[AsyncConnection]:
        """For key lookups only (one short query): the small pool no request holds while waiting."""
        async with self._pair()[1].connect() as conn:
            yield conn

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        engine = self.engine
        assert self._gate is not None
        async with self._gate, engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncConnection]:
        async with self._connection() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """Commit on success, roll back on error (the pool gives the connection back in AUTOCOMMIT)."""
        async with self._connection() as conn:
            isolation = "SERIALIZABLE" if conn.dialect.name == "sqlite" else "READ COMMITTED"
            tx_conn = await conn.execution_options(isolation_level=isolation)
            async with tx_conn.begin():
                yield tx_conn


async def run_sync(conn: AsyncConnection, fn: Callable[[Session], T]) -> T:
    """Run a sync library function that takes a Session, on this async connection, no thread."""

    def call(sync_conn: Connection) -> T:
        # joined to the caller's transaction: a commit() inside does not end it
        with Session(bind=sync_conn, expire_on_commit=False) as s:
            out = fn(s)
            s.flush()
            return out

    return await conn.run_sync(call)


def dialect(conn: AsyncConnection) -> str:
    return str(conn.dialect.name)
