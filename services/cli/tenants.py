"""`earshot tenants create|list|show|update`: who owns keys and jobs, what each may read, its quotas."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.orm import Session

from earshot.db.session import session_scope
from earshot.errors import InputError
from earshot.tenants import UNCHANGED, Tenant, create_tenant, get_tenant, list_tenants, update_tenant
from earshot.tenants.models import (
    DEFAULT_MAX_AUDIO_HOURS_PER_DAY,
    DEFAULT_MAX_CONCURRENT_JOBS,
    DEFAULT_REQUESTS_PER_MINUTE,
)
from services.cli.common import console, database_settings, err_console

app = typer.Typer(
    help="Tenants: every API key acts for one; each has source allow-lists and quotas.",
    no_args_is_help=True,
)

LIMIT_HELP = "a number, or 'none' for unlimited"


def _limit(text: str | None, kind: type[int] | type[float]) -> Any:
    """'none'/'unlimited' -> None; a number -> that number; not given -> UNCHANGED."""
    if text is None:
        return UNCHANGED
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        return kind(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not {LIMIT_HELP}") from None


def _limits(jobs: str | None, hours: str | None, per_minute: str | None) -> dict[str, Any]:
    return {
        "max_concurrent_jobs": _limit(jobs, int),
        "max_audio_hours_per_day": _limit(hours, float),
        "requests_per_minute": _limit(per_minute, int),
    }


def _save(change: Callable[[Session], Tenant], as_json: bool) -> None:
    """Create or change a tenant in one transaction and print it; a refused value exits 2."""
    settings = database_settings()
    try:
        with session_scope(settings.database_url) as s:
            row = _row(change(s))
    except InputError as exc:
        err_console.print(f"[red]{exc.message}")
        raise typer.Exit(code=2) from None
    _print([row], as_json)


def _row(t: Tenant) -> dict[str, Any]:
    return {
        "id": t.id, "name": t.name, "allowed_sources": list(t.allowed_sources or []),
        "max_concurrent_jobs": t.max_concurrent_jobs,
        "max_audio_hours_per_day": t.max_audio_hours_per_day,
        "requests_per_minute": t.requests_per_minute,
    }


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("id", "name", "allowed sources", "jobs at once", "audio h/day", "requests/min")
    for r in rows:
        table.add_row(
            r["id"], r["name"], "\n".join(r["allowed_sources"]) or "(none)",
            *(str(r[k]) if r[k] is not None else "unlimited"
              for k in ("max_concurrent_jobs", "max_audio_hours_per_day", "requests_per_minute")),
        )
    console.print(table)


@app.command("create")
def create(
    tenant_id: Annotated[str, typer.Argument(help="Slug: a-z, 0-9, '-', '_' (e.g. team-a)")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Display name")] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option("--allow", "-a", help="Source it may submit: s3://bucket/prefix/ or file:///dir/ (repeat)"),
    ] = None,
    max_concurrent_jobs: Annotated[
        str, typer.Option(help=f"Jobs queued or running at once ({LIMIT_HELP})")
    ] = str(DEFAULT_MAX_CONCURRENT_JOBS),
    audio_hours_per_day: Annotated[
        str, typer.Option(help=f"Hours of audio per rolling 24 h ({LIMIT_HELP})")
    ] = str(DEFAULT_MAX_AUDIO_HOURS_PER_DAY),
    requests_per_minute: Annotated[
        str, typer.Option(help=f"API requests per minute, per API process ({LIMIT_HELP})")
    ] = str(DEFAULT_REQUESTS_PER_MINUTE),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Create a tenant (then `earshot keys create --tenant ID`)."""
    limits = _limits(max_concurrent_jobs, audio_hours_per_day, requests_per_minute)
    _save(
        lambda s: create_tenant(s, tenant_id=tenant_id, name=name, allowed_sources=allow or [], **limits),
        as_json,
    )


@app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False) -> None:
    """Every tenant with its allow-list and quotas."""
    settings = database_settings()
    with session_scope(settings.database_url) as s:
        rows = [_row(t) for t in list_tenants(s)]
    _print(rows, as_json)


@app.command("show")
def show(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """One tenant."""
    settings = database_settings()
    with session_scope(settings.database_url) as s:
        tenant = get_tenant(s, tenant_id)
        row = _row(tenant) if tenant is not None else None
    if row is None:
        err_console.print(f"[red]no tenant {tenant_id}")
        raise typer.Exit(code=2)
    _print([row], as_json)


@app.command("update")
def update(
    tenant_id: Annotated[str, typer.Argument(help="Tenant id")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Display name")] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", "-a", help="Add a source pattern (repeat)")] = None,
    disallow: Annotated[
        list[str] | None, typer.Option("--disallow", "-d", help="Remove a source pattern (repeat)")
    ] = None,
    max_concurrent_jobs: Annotated[str | None, typer.Option(help=LIMIT_HELP)] = None,
    audio_hours_per_day: Annotated[str | None, typer.Option(help=LIMIT_HELP)] = None,
    requests_per_minute: Annotated[str | None, typer.Option(help=LIMIT_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Change a tenant's allow-list or quotas (options left out stay as they are)."""
    limits = _limits(max_concurrent_jobs, audio_hours_per_day, requests_per_minute)
    _save(
        lambda s: update_tenant(s, tenant_id, name=name, allow=allow or [], disallow=disallow or [], **limits),
        as_json,
    )
