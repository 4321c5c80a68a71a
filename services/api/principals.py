"""Who is calling: API keys looked up by SHA-256 and cached in memory for a few seconds.

A cached answer (found, unknown or revoked) lives ``Settings.api_key_cache_s`` seconds (5 by
default), together with its tenant and the tenant's rate limit. So a key revoked elsewhere (the CLI, another API process) keeps working for at most
that long in each process; a key revoked through this process's ``/v1/keys/{id}/revoke`` stops
at once. The cache is bounded, so a flood of made-up tokens cannot grow it without limit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from earshot.auth import TOKEN_PREFIX, ApiKey, hash_token, scope_allows
from earshot.auth.service import TOUCH_INTERVAL
from earshot.db.base import utcnow
from earshot.tenants import Tenant

if TYPE_CHECKING:
    from services.api.db import Database

MAX_ENTRIES = 10_000
MAX_TOKEN_CHARS = 200

_keys = ApiKey.__table__
_tenants = Tenant.__table__
_LOOKUP = (
    select(_keys.c.id, _keys.c.scopes, _keys.c.revoked_at, _keys.c.last_used_at, _keys.c.tenant_id,
           _tenants.c.requests_per_minute)
    .select_from(_keys.outerjoin(_tenants, _tenants.c.id == _keys.c.tenant_id))
    .where(_keys.c.key_hash == bindparam("h"))
)
_TOUCH = update(ApiKey).where(ApiKey.id == bindparam("kid")).values(last_used_at=bindparam("now"))


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    scopes: tuple[str, ...]
    tenant_id: str
    requests_per_minute: int | None = None  # the tenant's rate limit (None: unlimited)

    @property
    def admin(self) -> bool:
        """Admin keys act across tenants (and responses say so)."""
        return "admin" in self.scopes

    def allows(self, scope: str) -> bool:
        return scope_allows(self.scopes, scope)


class KeyCache:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = max(0.0, ttl_s)
        self._entries: dict[str, tuple[float, Principal | None]] = {}

    async def lookup(self, db: Database, token: str) -> Principal | None:
        """The active key for ``token`` or None; a database read at most once per window.

        A hit needs no connection at all, so a route that does not query (or queries late)
        holds none while it waits.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_CHARS:
            return None
        digest = hash_token(token)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with db.auth_reader() as conn:
            principal = await self._load(conn, digest)
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[digest] = (now + self.ttl_s, principal)
        return principal

    def forget(self, key_id: str) -> None:
        """Drop a key at once (revoked through this process)."""
        for digest, (_, principal) in list(self._entries.items()):
            if principal is not None and principal.key_id == key_id:
                self._entries.pop(digest, None)

    async def _load(self, conn: AsyncConnection, digest: str) -> Principal | None:
        row = (await conn.execute(_LOOKUP, {"h": digest})).first()
        if row is None or row.revoked_at is not None:
            return None
        now = utcnow()
        last: datetime | None = row.last_used_at
        if last is not None and last.tzinfo is None:  # SQLite drops the zone
            last = last.replace(tzinfo=now.tzinfo)
        if last is None or now - last > TOUCH_INTERVAL:
            await conn.execute(_TOUCH, {"kid": row.id, "now": now})
            if conn.in_transaction():
                await conn.commit()
        return Principal(key_id=row.id, scopes=tuple(row.scopes or ()), tenant_id=row.tenant_id,
                         requests_per_minute=row.requests_per_minute)
