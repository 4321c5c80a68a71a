"""The embedded SQLite database: the async API path (aiosqlite) and search's LIKE fallback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from earshot.auth import create_key
from earshot.config import Settings
from earshot.db import migrate
from earshot.db.session import db_engine, dispose_all, session_factory
from earshot.search import SearchPage, search
from services.api.app import create_app
from services.api.db import async_url
from tests.fixtures.api import bearer, seed_job


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'search.db'}"
    migrate.upgrade("heads", url=url)
    yield url
    dispose_all()


@pytest.fixture
def session(url: str) -> Iterator[Session]:
    with session_factory(url)() as s:
        yield s


def run_search(url: str, *args: Any, **kwargs: Any) -> SearchPage:
    async def main() -> SearchPage:
        engine = create_async_engine(async_url(url))
        try:
            async with engine.connect() as conn:
                return await search(conn, *args, **kwargs)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def test_migration_on_sqlite_has_keys_and_no_postgres_parts(session: Session) -> None:
    insp = inspect(db_engine(str(session.get_bind().url)))
    assert "api_keys" in insp.get_table_names()
    assert "search_tsv" not in {c["name"] for c in insp.get_columns("utterances")}


def test_fallback_ranks_and_marks(session: Session, url: str) -> None:
    strong = seed_job(session, utterances=[(61.5, 64.0, "the Lighthouse keeper and the lighthouse <lamp>")])
    weak = seed_job(session, utterances=[(3.0, 4.0, "a keeper far from any lighthouse, " + "filler " * 80)])
    seed_job(session, utterances=[(1.0, 2.0, "nothing to see")])
    summary = seed_job(session, summaries=[("file", 0, 0.0, 9.0, "Keepers", "a lighthouse story")])
    session.commit()

    page = run_search(url, "lighthouse keeper")
    assert [h.job_id for h in page.hits] == [strong, summary, weak]
    best = page.hits[0]
    assert best.start == 61.5 and best.kind == "utterance"
    assert "<mark>Lighthouse</mark>" in best.snippet and "&lt;lamp&gt;" in best.snippet

    assert [h.job_id for h in run_search(url, "lighthouse", kinds=["summary"]).hits] == [summary]
    assert [h.job_id for h in run_search(url, "lighthouse", job_id=weak).hits] == [weak]
    first = run_search(url, "lighthouse", limit=2)
    rest = run_search(url, "lighthouse", limit=2, offset=2)
    assert first.has_more and not rest.has_more and len(first.hits) + len(rest.hits) == 3
    assert run_search(url, "   ").hits == [] and run_search(url, "%_\\").hits == []
    assert run_search(url, "zz\x00top").hits == []  # NUL is a separator, not an error


def test_api_serves_jobs_results_and_search_on_sqlite(session: Session, url: str, tmp_path: Path) -> None:
    job = seed_job(session, utterances=[(0.5, 2.0, "a lighthouse keeper"), (2.5, 3.0, "waves")],
                   events=[(1.0, 4.0, "Foghorn")])
    _, token = create_key(session, name="sqlite", scopes=["read"])
    session.commit()
    settings = Settings(database_url=url, output_url=(tmp_path / "out").as_uri())
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        got = client.get(f"/v1/jobs/{job}")
        assert got.status_code == 200 and got.json()["duration_s"] == 120.0
        assert got.json()["created_at"].endswith("Z")  # SQLite drops the zone; the API puts UTC back
        transcript = client.get(f"/v1/jobs/{job}/transcript").json()
        assert [u["text"] for u in transcript["utterances"]] == ["a lighthouse keeper", "waves"]
        assert client.get(f"/v1/jobs/{job}/events", params={"label": "fog"}).json()["events"][0]["label"] == "Foghorn"
        assert client.get("/v1/jobs").json()["jobs"][0]["id"] == job
        hits = client.get("/v1/search", params={"q": "lighthouse"}).json()["hits"]
        assert [h["job_id"] for h in hits] == [job]
        assert client.get("/readyz").json() == {"status": "ok", "database": "ok"}
