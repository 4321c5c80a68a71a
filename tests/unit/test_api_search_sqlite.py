"""Search on the embedded SQLite database: the LIKE fallback keeps the same contract."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from earshot.db import migrate
from earshot.db.session import db_engine, dispose_all, session_factory
from earshot.search import search
from tests.fixtures.api import seed_job


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    url = f"sqlite:///{tmp_path / 'search.db'}"
    migrate.upgrade("heads", url=url)
    with session_factory(url)() as s:
        yield s
    dispose_all()


def test_migration_on_sqlite_has_keys_and_no_postgres_parts(session: Session) -> None:
    insp = inspect(db_engine(str(session.get_bind().url)))
    assert "api_keys" in insp.get_table_names()
    assert "search_tsv" not in {c["name"] for c in insp.get_columns("utterances")}


def test_fallback_ranks_and_marks(session: Session) -> None:
    strong = seed_job(session, utterances=[(61.5, 64.0, "the Lighthouse keeper and the lighthouse <lamp>")])
    weak = seed_job(session, utterances=[(3.0, 4.0, "a keeper far from any lighthouse, " + "filler " * 80)])
    seed_job(session, utterances=[(1.0, 2.0, "nothing to see")])
    summary = seed_job(session, summaries=[("file", 0, 0.0, 9.0, "Keepers", "a lighthouse story")])
    session.commit()

    page = search(session, "lighthouse keeper")
    assert [h.job_id for h in page.hits] == [strong, summary, weak]
    best = page.hits[0]
    assert best.start == 61.5 and best.kind == "utterance"
    assert "<mark>Lighthouse</mark>" in best.snippet and "&lt;lamp&gt;" in best.snippet

    assert [h.job_id for h in search(session, "lighthouse", kinds=["summary"]).hits] == [summary]
    assert [h.job_id for h in search(session, "lighthouse", job_id=weak).hits] == [weak]
    first = search(session, "lighthouse", limit=2)
    rest = search(session, "lighthouse", limit=2, offset=2)
    assert first.has_more and not rest.has_more and len(first.hits) + len(rest.hits) == 3
    assert search(session, "   ").hits == [] and search(session, "%_\\").hits == []
    assert search(session, "zz\x00top").hits == []  # NUL is a separator, not an error
