"""The embedded database on a fresh checkout: nothing under .earshot/ exists yet."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from earshot.db import migrate


def test_embedded_database_migrates_into_a_directory_that_does_not_exist_yet(tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "checkout" / "earshot.db"
    url = f"sqlite:///{db}"
    migrate.upgrade(url=url)
    engine = create_engine(url)
    try:
        assert "jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
