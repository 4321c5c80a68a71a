"""Run Alembic migrations programmatically (`earshot db upgrade|downgrade|current`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from earshot.db.session import ensure_sqlite_dir

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' would be read as interpolation by configparser (passwords often contain it)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(revision: str = "heads", *, url: str) -> None:
    # A fresh checkout has no .earshot/ yet: SQLite cannot create the file's directory itself.
    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(revision: str = "base", *, url: str) -> None:
    command.downgrade(alembic_config(url), revision)


def current(*, url: str) -> None:
    command.current(alembic_config(url), verbose=False)
