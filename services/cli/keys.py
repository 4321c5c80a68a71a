"""`earshot keys create|list|revoke`: API keys for the REST API; every key acts for one tenant."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from earshot.auth import SCOPES, create_key, list_keys, revoke_key
from earshot.db.session import session_scope
from earshot.errors import InputError
from earshot.tenants import DEFAULT_TENANT
from services.cli.common import console, database_settings, err_console

app = typer.Typer(help="API keys (stored hashed; a token is shown once).", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", "-n", help="Who or what uses the key")],
    scope: Annotated[
        list[str], typer.Option("--scope", "-s", help=f"Repeat or comma-separate: {', '.join(SCOPES)}")
    ],
    tenant: Annotated[
        str, typer.Option("--tenant", "-t", help="The tenant the key acts for (see `earshot tenants`)")
    ] = DEFAULT_TENANT,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Create a key and print its token (the only time it is shown)."""
    settings = database_settings()
    try:
        with session_scope(settings.database_url) as s:
            key, token = create_key(s, name=name, scopes=scope, tenant_id=tenant)
            row = {"id": key.id, "name": key.name, "prefix": key.prefix, "scopes": key.scopes,
                   "tenant": key.tenant_id, "token": token}
    except InputError as exc:
        err_console.print(f"[red]{exc.message}")
        raise typer.Exit(code=2) from None
    if as_json:
        print(json.dumps(row))
        return
    console.print(
        f"key [bold]{row['id']}[/] ({row['name']}, tenant {row['tenant']}, scopes {','.join(row['scopes'])})"
    )
    console.print("token (shown once, store it now):")
    print(token)


@app.command("list")
def list_(
    active: Annotated[bool, typer.Option("--active", help="Hide revoked keys")] = False,
    tenant: Annotated[str | None, typer.Option("--tenant", "-t", help="Only this tenant's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List keys (never their tokens)."""
    settings = database_settings()
    with session_scope(settings.database_url) as s:
        rows = [
            {
                "id": k.id, "name": k.name, "prefix": k.prefix, "scopes": list(k.scopes), "tenant": k.tenant_id,
                "created_at": k.created_at.isoformat(),
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in list_keys(s, include_revoked=not active, tenant_id=tenant)
        ]
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("id", "name", "tenant", "prefix", "scopes", "created", "last used", "revoked")
    for r in rows:
        table.add_row(
            str(r["id"]), str(r["name"]), str(r["tenant"]), str(r["prefix"]),
            ",".join(r["scopes"]),  # type: ignore[arg-type]
            str(r["created_at"])[:19], str(r["last_used_at"] or "")[:19], str(r["revoked_at"] or "")[:19],
        )
    console.print(table)


@app.command("revoke")
def revoke(key: Annotated[str, typer.Argument(help="Key id or prefix (ek_...)")]) -> None:
    """Revoke a key; requests with it fail from now on."""
    settings = database_settings()
    try:
        with session_scope(settings.database_url) as s:
            found = revoke_key(s, key)
            revoked = found is not None
    except InputError as exc:
        err_console.print(f"[red]{exc.message}")
        raise typer.Exit(code=2) from None
    if not revoked:
        err_console.print(f"[red]no key {key}")
        raise typer.Exit(code=2)
    console.print(f"revoked {key}")
