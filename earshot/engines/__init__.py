"""Inference engines behind one interface, chosen by ``EARSHOT_ENGINE``."""

from __future__ import annotations

from functools import lru_cache

from earshot.config import Settings, get_settings
from earshot.engines.base import Engine


@lru_cache(maxsize=4)
def _cached(kind: str, model_path: str, triton_url: str) -> Engine:
    settings = get_settings()
    if kind == "triton":
        from earshot.engines.triton import TritonEngine

        return TritonEngine.from_settings(settings)
    from earshot.engines.local import LocalEngine

    return LocalEngine.from_settings(settings)


def get_engine(settings: Settings | None = None, *, kind: str | None = None) -> Engine:
    """One engine per process and configuration: model weights load once per worker."""
    s = settings or get_settings()
    return _cached(kind or s.engine, s.model_path, s.triton_url)


def reset_engines() -> None:
    _cached.cache_clear()


__all__ = ["Engine", "get_engine", "reset_engines"]
