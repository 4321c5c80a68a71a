"""Which objects become jobs. Shared by the event bridge and the reconciler.

Two kinds of "no":

- *ignored* (:class:`Skip`): by configuration or by nature -- another prefix or suffix, a
  folder marker, an empty object, Earshot's own outputs. Normal traffic; logged, not kept.
- *rejected* (:class:`Reject`): an upload someone meant to be processed that cannot be -- an
  unknown bucket, a key Earshot cannot name outputs after, a file over the size limit. These
  go to the dead letters with their reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from earshot import storage
from earshot.config import Settings

__all__ = ["Filters", "Reject", "Skip"]


@dataclass(frozen=True)
class Skip:
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str = ""


def _s3_prefix(uri: str) -> tuple[str, str] | None:
    try:
        ref = storage.parse_uri(uri)
    except ValueError:
        return None
    if ref.scheme != "s3" or ref.bucket is None:
        return None
    return ref.bucket, ref.key


@dataclass(frozen=True)
class Filters:
    buckets: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    exclude_prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    min_bytes: int = 1
    max_bytes: int | None = None
    # Earshot's own prefixes in particular buckets (output_url, scratch_url on S3)
    bucket_excludes: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def from_settings(cls, settings: Settings) -> Filters:
        excludes = [p for p in settings.ingest_exclude_prefixes if p]
        if settings.ingest_output_prefix:
            excludes.append(settings.ingest_output_prefix)
        own = [p for p in (_s3_prefix(settings.output_url), _s3_prefix(settings.scratch_url)) if p]
        return cls(
            buckets=frozenset(settings.ingest_buckets),
            prefixes=tuple(settings.ingest_prefixes),
            exclude_prefixes=tuple(dict.fromkeys(excludes)),
            suffixes=tuple(s.lower() for s in settings.ingest_suffixes),
            min_bytes=settings.ingest_min_bytes,
            max_bytes=settings.ingest_max_bytes
            if settings.ingest_max_bytes is not None
            else settings.max_file_bytes,
            bucket_excludes=tuple(own),
        )

    def check_bucket(self, bucket: str) -> Reject | None:
        if self.buckets and bucket not in self.buckets:
            return Reject("unknown_bucket", f"bucket {bucket!r} is not in EARSHOT_INGEST_BUCKETS")
        return None

    def check_key(self, bucket: str, key: str) -> Skip | Reject | None:
        if key.endswith("/"):
            return Skip("folder_marker")
        for prefix in self.exclude_prefixes:
            if key.startswith(prefix):
                return Skip("excluded_prefix", prefix)
        for own_bucket, own_prefix in self.bucket_excludes:
            if bucket == own_bucket and key.startswith(own_prefix):
                return Skip("earshot_prefix", own_prefix)
        if self.prefixes and not any(key.startswith(p) for p in self.prefixes):
            return Skip("prefix_not_included")
        if self.suffixes and not key.lower().endswith(self.suffixes):
            return Skip("suffix_not_included")
        if any(part in (".", "..") for part in key.split("/")):
            return Reject("unsafe_key", f"key {key!r} has a '.' or '..' segment")
        return None

    def check_size(self, size: int | None) -> Skip | Reject | None:
        if size is None:
            return None
        if size < self.min_bytes:
            return Skip("too_small", f"{size} bytes")
        if self.max_bytes is not None and size > self.max_bytes:
            return Reject("too_large", f"{size} bytes is over the limit of {self.max_bytes}")
        return None

    def check(self, bucket: str, key: str, size: int | None) -> Skip | Reject | None:
        """The first reason not to make a job of this object, or None."""
        return self.check_bucket(bucket) or self.check_key(bucket, key) or self.check_size(size)
