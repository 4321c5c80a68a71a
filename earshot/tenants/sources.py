"""Source allow-lists: which ``s3://bucket/prefix/`` a tenant may have Earshot read for it.

Earshot reads sources with its own credentials, so a source a caller names is a request to act
on the caller's behalf (a confused deputy, unless checked). Every caller-supplied URI is put in
one canonical form and must start with one of the tenant's patterns. Patterns name folders: a
pattern without a trailing slash gets one, so ``s3://b/calls`` never admits ``s3://b/calls-old/x``.
Local files are refused unless a ``file:///dir/`` pattern admits them; their path is resolved
(symlinks and ``..``) before matching.

A refused source and a missing one give the same error (:func:`source_unavailable`), so a key
cannot probe which buckets or objects exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from earshot.errors import InputError
from earshot.tenants.errors import source_unavailable
from earshot.tenants.models import Tenant

__all__ = [
    "canonical_uri",
    "check_source",
    "normalize_pattern",
    "source_allowed",
    "tenant_for_source",
]

# S3's bucket naming rules (also what MinIO accepts)
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_URI_CHARS = 2048


def _s3_parts(text: str) -> tuple[str, str]:
    bucket, _, key = text[len("s3://") :].partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(f"{text!r}: not a valid bucket name")
    return bucket, key


def _local_path(text: str) -> str:
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError(f"{text!r}: only plain local file URIs are allowed")
        path = unquote(parts.path)
    else:
        path = text
    if "\x00" in path or not path:
        raise ValueError("bad path")
    return path


def canonical_uri(uri: str) -> str:
    """The one spelling of ``uri`` that allow-lists are matched against; ValueError if unusable."""
    if not uri or len(uri) > MAX_URI_CHARS or _CONTROL.search(uri):
        raise ValueError("empty, over-long or control characters")
    if uri.startswith("s3://"):
        bucket, key = _s3_parts(uri)
        segments = key.split("/")
        if not key or key.endswith("/") or any(s in (".", "..") for s in segments):
            raise ValueError(f"{uri!r}: not an object key")
        return f"s3://{bucket}/{key}"
    if uri.startswith("file:") or "://" not in uri:
        # realpath: a symlink or ".." inside an allowed folder must not lead out of it
        return Path(os.path.realpath(_local_path(uri))).as_uri()
    raise ValueError(f"{uri!r}: unsupported scheme")


def normalize_pattern(pattern: str) -> str:
    """``s3://bucket[/prefix]`` or ``file:///dir`` as a folder prefix ending in ``/``."""
    text = pattern.strip()
    if not text or _CONTROL.search(text):
        raise InputError(f"bad source pattern {pattern!r}", code="bad_pattern")
    try:
        if text.startswith("s3://"):
            bucket, prefix = _s3_parts(text)
            segments = [s for s in prefix.split("/") if s]
            if any(s in (".", "..") or "*" in s for s in segments):
                raise ValueError("dot segments and wildcards are not patterns")
            return "s3://" + "/".join([bucket, *segments]) + "/"
        if text.startswith("file:///"):
            path = os.path.realpath(_local_path(text))
            return Path(path).as_uri().rstrip("/") + "/"
    except ValueError as exc:
        raise InputError(f"bad source pattern {pattern!r}: {exc}", code="bad_pattern") from None
    raise InputError(
        f"bad source pattern {pattern!r}: use s3://bucket/prefix/ or file:///dir/", code="bad_pattern"
    )


def _best_match(patterns: Iterable[str], canonical: str) -> int:
    """Length of the longest pattern that admits ``canonical``; -1 when none does."""
    best = -1
    for raw in patterns:
        try:
            pattern = normalize_pattern(raw)
        except InputError:
            continue  # a bad stored pattern admits nothing
        if canonical.startswith(pattern):
            best = max(best, len(pattern))
    return best


def source_allowed(patterns: Sequence[str], uri: str) -> bool:
    try:
        canonical = canonical_uri(uri)
    except ValueError:
        return False
    return _best_match(patterns, canonical) >= 0


def check_source(session: Session, tenant_id: str, uri: str) -> str:
    """The canonical URI if ``tenant_id`` may submit ``uri``; else ``SourceNotAllowed``."""
    tenant = session.get(Tenant, tenant_id)
    try:
        canonical = canonical_uri(uri)
    except ValueError:
        raise source_unavailable(uri) from None
    if tenant is None or _best_match(tenant.allowed_sources or [], canonical) < 0:
        raise source_unavailable(uri)
    return canonical


def tenant_for_source(session: Session, uri: str) -> str | None:
    """The tenant whose allow-list admits ``uri`` most specifically (used by ingest).

    None when no tenant admits it, or when two tenants admit it equally specifically: an
    object nobody clearly owns is not processed.
    """
    try:
        canonical = canonical_uri(uri)
    except ValueError:
        return None
    best, owners = -1, []
    for tenant_id, patterns in session.execute(select(Tenant.id, Tenant.allowed_sources)):
        score = _best_match(patterns or [], canonical)
        if score < 0:
            continue
        if score > best:
            best, owners = score, [tenant_id]
        elif score == best:
            owners.append(tenant_id)
    return owners[0] if len(owners) == 1 else None
