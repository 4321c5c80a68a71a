"""Find an AF3 checkpoint: a local directory, or an s3:// prefix mirrored into a local cache."""

from __future__ import annotations

from pathlib import Path

from earshot import storage
from earshot.config import Settings
from earshot.errors import ConfigError


def resolve_model_dir(model_path: str, settings: Settings) -> Path:
    """Return a local directory holding the checkpoint named by ``model_path``
    (an S3 prefix is mirrored once into ``model_cache_dir``)."""
    local, found = storage.mirror_prefix(model_path, settings.model_cache_dir, settings=settings)
    if storage.parse_uri(model_path).scheme == "s3" and not found:
        raise ConfigError(f"no model files under {model_path}", code="model_not_found")
    return local
