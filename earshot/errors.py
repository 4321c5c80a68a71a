"""Errors that carry a stable machine-readable code and a human-readable message."""

from __future__ import annotations


class EarshotError(Exception):
    """Base error. ``code`` is stored on failed jobs and returned by the API."""

    code: str = "internal_error"
    retryable: bool = False

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InputError(EarshotError):
    """The input file is unusable: the job fails and is not retried."""

    code = "bad_input"


class AudioError(InputError):
    code = "bad_audio"


class StorageError(EarshotError):
    code = "storage_error"


class EngineError(EarshotError):
    code = "engine_error"


class EngineUnavailable(EngineError):
    """The inference backend cannot be reached now; the task may succeed later."""

    code = "engine_unavailable"
    retryable = True


class ConfigError(EarshotError):
    code = "config_error"
