"""Create, list, revoke and check API keys. Used by the API's auth dependency and the CLI.

A token is ``ek_`` followed by 43 URL-safe characters (256 random bits). It is shown once, at
creation; the database keeps its SHA-256 (a fast hash is right for high-entropy tokens: there
is nothing to brute-force) and a short display prefix. Every request looks the hash up, so a
revoked key stops working on the next request.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from earshot.auth.models import ApiKey
from earshot.db.base import utcnow
from earshot.errors import InputError
from earshot.tenants.models import DEFAULT_TENANT
from earshot.tenants.service import require_tenant

SCOPES: tuple[str, ...] = ("read", "submit", "admin")
TOKEN_PREFIX = "ek_"
DISPLAY_PREFIX_LEN = len(TOKEN_PREFIX) + 8
# last_used_at is refreshed at most this often, so reads do not turn into writes
TOUCH_INTERVAL = timedelta(seconds=60)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    found: list[str] = []
    for raw in scopes:
        for part in raw.split(","):
            scope = part.strip().lower()
            if not scope:
                continue
            if scope not in SCOPES:
                raise InputError(
                    f"unknown scope {scope!r}; choose from {', '.join(SCOPES)}", code="unknown_scope"
                )
            if scope not in found:
                found.append(scope)
    if not found:
        raise InputError("a key needs at least one scope", code="no_scope")
    return found


def scope_allows(granted: Sequence[str], needed: str) -> bool:
    """``admin`` implies every scope; otherwise a scope grants only itself."""
    return needed in granted or "admin" in granted


def create_key(
    session: Session, *, name: str, scopes: Iterable[str], tenant_id: str = DEFAULT_TENANT
) -> tuple[ApiKey, str]:
    """Store a new key of ``tenant_id``; returns (row, token). The token is shown only now."""
    name = name.strip()
    if not name:
        raise InputError("a key needs a name", code="no_name")
    require_tenant(session, tenant_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        name=name[:200],
        prefix=token[:DISPLAY_PREFIX_LEN],
        key_hash=hash_token(token),
        scopes=normalize_scopes(scopes),
        tenant_id=tenant_id,
    )
    session.add(key)
    session.flush()
    return key, token


def list_keys(
    session: Session, *, include_revoked: bool = True, tenant_id: str | None = None
) -> list[ApiKey]:
    q = select(ApiKey).order_by(ApiKey.created_at.desc(), ApiKey.id)
    if tenant_id is not None:
        q = q.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        q = q.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(q))


def get_key(session: Session, ref: str) -> ApiKey | None:
    """A key by id or by its display prefix; an ambiguous prefix is an error."""
    if "\x00" in ref:  # PostgreSQL text cannot hold it, so no key has it
        return None
    rows = list(session.scalars(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.prefix == ref))))
    if len(rows) > 1:
        raise InputError(f"{ref!r} matches {len(rows)} keys; use the key id", code="ambiguous_key")
    return rows[0] if rows else None


def revoke_key(session: Session, ref: str) -> ApiKey | None:
    """Revoke by id or prefix; revoking twice keeps the first revocation time."""
    key = get_key(session, ref)
    if key is not None and key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key


def authenticate(session: Session, token: str | None) -> ApiKey | None:
    """The active key for ``token``, or None (missing, malformed, unknown or revoked)."""
    if not token or not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_token(token)))
    if key is None or key.revoked_at is not None:
        return None
    now = utcnow()
    last = key.last_used_at
    if last is not None and last.tzinfo is None:  # SQLite drops the zone
        last = last.replace(tzinfo=now.tzinfo)
    if last is None or now - last > TOUCH_INTERVAL:
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))
        session.commit()
    return key
