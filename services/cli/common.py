"""Shared CLI helpers: settings overrides, database readiness, stop signals, console."""

from __future__ import annotations

import signal
import threading

from rich.console import Console

from earshot.config import Settings, get_settings
from earshot.db import migrate

console = Console()
err_console = Console(stderr=True)


def apply_overrides(**flags: str | None) -> Settings:
    """CLI flags win over the environment: a copy of the settings with the given flags set.

    The copy is passed down (and to in-process tasks through ``workers.celery_app.run_with``);
    the environment and every cache stay as they were.
    """
    update = {name: value for name, value in flags.items() if value is not None}
    settings = get_settings()
    return settings.model_copy(update=update) if update else settings


def ensure_embedded_db(settings: Settings) -> None:
    """The embedded SQLite database migrates itself; PostgreSQL is migrated by `earshot db upgrade`."""
    if settings.database_url.startswith("sqlite"):
        migrate.upgrade(url=settings.database_url)


def database_settings() -> Settings:
    """The settings of a command that uses the database, with the embedded database migrated."""
    settings = get_settings()
    ensure_embedded_db(settings)
    return settings


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: a looping command finishes its round, then exits."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    return stop
