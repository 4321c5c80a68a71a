"""Tenants: who owns keys, jobs and conversations; which sources each may read; its quotas.

See docs/security.md. Every API key belongs to a tenant (``default`` on single-team installs).
"""

from earshot.tenants.errors import (
    IdempotencyConflict,
    QuotaExceeded,
    RateLimited,
    SourceNotAllowed,
    UnknownTenant,
    source_unavailable,
)
from earshot.tenants.idempotency import find_idempotent, fingerprint
from earshot.tenants.models import DEFAULT_TENANT, Tenant
from earshot.tenants.quotas import RateLimiter, audio_hours_used, check_audio_budget, check_quota
from earshot.tenants.service import (
    UNCHANGED,
    create_tenant,
    get_tenant,
    list_tenants,
    require_tenant,
    tenant_scope,
    update_tenant,
)
from earshot.tenants.sources import (
    canonical_uri,
    check_source,
    normalize_pattern,
    source_allowed,
    tenant_for_source,
)

__all__ = [
    "DEFAULT_TENANT",
    "UNCHANGED",
    "IdempotencyConflict",
    "QuotaExceeded",
    "RateLimited",
    "RateLimiter",
    "SourceNotAllowed",
    "Tenant",
    "UnknownTenant",
    "audio_hours_used",
    "canonical_uri",
    "check_audio_budget",
    "check_quota",
    "check_source",
    "create_tenant",
    "find_idempotent",
    "fingerprint",
    "get_tenant",
    "list_tenants",
    "normalize_pattern",
    "require_tenant",
    "source_allowed",
    "source_unavailable",
    "tenant_for_source",
    "tenant_scope",
    "update_tenant",
]
