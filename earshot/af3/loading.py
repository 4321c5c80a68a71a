"""Find an AF3 checkpoint: a local directory, or an s3:// prefix mirrored into a local cache."""

from __future__ import annotations

from pathlib import Path

from earshot import storage
from earshot.config import Settings
from earshot.errors import ConfigError


def resolve_model_dir(model_path: str, settings: Settings) -> Path:
    """Return a local directory holding the checkpoint named by ``model_path``.

    An S3 prefix is copied once into ``model_cache_dir``; files whose size already matches
    are not fetched again, so a restarted worker starts quickly.
    """
    ref = storage.parse_uri(model_path)
    if ref.scheme == "file":
        return ref.path
    prefix = ref.key.rstrip("/") + "/"
    target = Path(settings.model_cache_dir) / (ref.bucket or "") / prefix
    found = 0
    for info in storage.list_objects(f"s3://{ref.bucket}/{prefix}"):
        rel = storage.parse_uri(info.uri).key[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        found += 1
        local = target / rel
        if local.exists() and local.stat().st_size == info.size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        storage.download_to(info.uri, local)
    if not found:
        raise ConfigError(f"no model files under {model_path}", code="model_not_found")
    return target
