"""Shared CLI helpers: settings overrides, database readiness, console."""

from __future__ import annotations

import os

from rich.console import Console

from earshot.config import Settings, get_settings, reset_settings
from earshot.db import migrate
from earshot.db.session import dispose_all

console = Console()
err_console = Console(stderr=True)


def apply_overrides(**env: str | None) -> Settings:
    """CLI flags win over the environment: set EARSHOT_* and reload the one Settings object."""
    changed = False
    for name, value in env.items():
        if value is not None:
            os.environ[f"EARSHOT_{name.upper()}"] = value
            changed = True
    if changed:
        reset_settings()
        dispose_all()
    return get_settings()


def ensure_embedded_db(settings: Settings) -> None:
    """The embedded SQLite database migrates itself; PostgreSQL is migrated by `earshot db upgrade`."""
    if settings.database_url.startswith("sqlite"):
        migrate.upgrade(url=settings.database_url)
