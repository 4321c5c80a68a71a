"""Create, list and change tenants (the ``earshot tenants`` CLI and tests use these)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from earshot.errors import InputError
from earshot.tenants.errors import UnknownTenant
from earshot.tenants.models import (
    DEFAULT_MAX_AUDIO_HOURS_PER_DAY,
    DEFAULT_MAX_CONCURRENT_JOBS,
    DEFAULT_REQUESTS_PER_MINUTE,
    Tenant,
)
from earshot.tenants.sources import normalize_pattern

__all__ = [
    "UNCHANGED",
    "create_tenant",
    "get_tenant",
    "list_tenants",
    "require_tenant",
    "tenant_scope",
    "update_tenant",
]

TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_PATTERNS = 200


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()


class Principal(Protocol):
    scopes: list[str]
    tenant_id: str


def tenant_scope(key: Principal) -> str | None:
    """The tenant a key's queries are limited to; None for an admin key, which sees all."""
    return None if "admin" in key.scopes else key.tenant_id


def _patterns(patterns: Iterable[str]) -> list[str]:
    found = list(dict.fromkeys(normalize_pattern(p) for p in patterns))
    if len(found) > MAX_PATTERNS:
        raise InputError(f"at most {MAX_PATTERNS} source patterns per tenant", code="too_many_patterns")
    return found


def get_tenant(session: Session, tenant_id: str) -> Tenant | None:
    if not TENANT_ID.match(tenant_id):
        return None
    return session.get(Tenant, tenant_id)


def require_tenant(session: Session, tenant_id: str) -> Tenant:
    tenant = get_tenant(session, tenant_id)
    if tenant is None:
        raise UnknownTenant(f"no tenant {tenant_id!r} (create it with `earshot tenants create`)")
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.id)))


def _quota(value: float | int | None, name: str) -> None:
    if value is not None and value < 0:
        raise InputError(f"{name} cannot be negative", code="bad_quota")


def create_tenant(
    session: Session,
    *,
    tenant_id: str,
    name: str | None = None,
    allowed_sources: Sequence[str] = (),
    max_concurrent_jobs: int | None = DEFAULT_MAX_CONCURRENT_JOBS,
    max_audio_hours_per_day: float | None = DEFAULT_MAX_AUDIO_HOURS_PER_DAY,
    requests_per_minute: int | None = DEFAULT_REQUESTS_PER_MINUTE,
) -> Tenant:
    if not TENANT_ID.match(tenant_id):
        raise InputError(
            f"tenant id {tenant_id!r}: use 1-64 of a-z, 0-9, '-' and '_' (starting with a letter or digit)",
            code="bad_tenant_id",
        )
    if session.get(Tenant, tenant_id) is not None:
        raise InputError(f"tenant {tenant_id!r} exists already", code="tenant_exists")
    for value, label in ((max_concurrent_jobs, "max_concurrent_jobs"),
                         (max_audio_hours_per_day, "max_audio_hours_per_day"),
                         (requests_per_minute, "requests_per_minute")):
        _quota(value, label)
    tenant = Tenant(
        id=tenant_id,
        name=(name or tenant_id).strip()[:200] or tenant_id,
        allowed_sources=_patterns(allowed_sources),
        max_concurrent_jobs=max_concurrent_jobs,
        max_audio_hours_per_day=max_audio_hours_per_day,
        requests_per_minute=requests_per_minute,
    )
    session.add(tenant)
    session.flush()
    return tenant


def update_tenant(
    session: Session,
    tenant_id: str,
    *,
    name: str | None = None,
    allow: Sequence[str] = (),
    disallow: Sequence[str] = (),
    allowed_sources: Sequence[str] | None = None,
    max_concurrent_jobs: int | _Unchanged | None = UNCHANGED,
    max_audio_hours_per_day: float | _Unchanged | None = UNCHANGED,
    requests_per_minute: int | _Unchanged | None = UNCHANGED,
) -> Tenant:
    """Change a tenant. ``allowed_sources`` replaces the list; ``allow``/``disallow`` edit it.

    A quota given as None means unlimited; leave it out (UNCHANGED) to keep it.
    """
    tenant = require_tenant(session, tenant_id)
    if name is not None and name.strip():
        tenant.name = name.strip()[:200]
    current = list(tenant.allowed_sources or []) if allowed_sources is None else _patterns(allowed_sources)
    removed = set(_patterns(disallow))
    tenant.allowed_sources = _patterns([*(p for p in current if p not in removed), *allow])
    if not isinstance(max_concurrent_jobs, _Unchanged):
        _quota(max_concurrent_jobs, "max_concurrent_jobs")
        tenant.max_concurrent_jobs = max_concurrent_jobs
    if not isinstance(max_audio_hours_per_day, _Unchanged):
        _quota(max_audio_hours_per_day, "max_audio_hours_per_day")
        tenant.max_audio_hours_per_day = max_audio_hours_per_day
    if not isinstance(requests_per_minute, _Unchanged):
        _quota(requests_per_minute, "requests_per_minute")
        tenant.requests_per_minute = requests_per_minute
    session.flush()
    return tenant
