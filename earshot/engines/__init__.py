"""Inference engines behind one interface, chosen by ``EARSHOT_ENGINE``."""

from __future__ import annotations

import threading

from earshot.config import Settings
from earshot.engines.base import Ask, Engine, Generation, texts

_ENGINES: dict[tuple[str, str, str], Engine] = {}
_LOCK = threading.Lock()


def get_engine(settings: Settings, *, kind: str | None = None) -> Engine:
    """One engine per process and configuration: model weights load once per worker.

    Built from the ``settings`` given; later calls with the same engine kind, model and
    Triton address share it.
    """
    key = (kind or settings.engine, settings.model_path, settings.triton_url)
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = _build(key[0], settings)
            _ENGINES[key] = engine
        return engine


def _build(kind: str, settings: Settings) -> Engine:
    if kind == "triton":
        from earshot.engines.triton import TritonEngine

        return TritonEngine.from_settings(settings)
    from earshot.engines.local import LocalEngine

    return LocalEngine.from_settings(settings)


def reset_engines() -> None:
    with _LOCK:
        _ENGINES.clear()


__all__ = ["Ask", "Engine", "Generation", "get_engine", "reset_engines", "texts"]
