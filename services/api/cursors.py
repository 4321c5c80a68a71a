"""Opaque page cursors: a keyset ``(created_at, id)`` for jobs, an offset for search."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from services.api.problems import ApiProblem

MAX_SEARCH_OFFSET = 10_000


def _bad_cursor() -> ApiProblem:
    return ApiProblem(
        422, "cursor is not one this API returned", code="bad_cursor",
        errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def encode_job_cursor(job: Any) -> str:
    """From the last row of a page (anything with ``created_at`` and ``id``)."""
    return _b64(json.dumps({"t": job.created_at.isoformat(), "id": job.id}, separators=(",", ":")).encode())


def decode_job_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        data = json.loads(_unb64(cursor))
        return datetime.fromisoformat(data["t"]), str(data["id"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _bad_cursor() from None


def encode_offset(offset: int) -> str:
    return _b64(f"o:{offset}".encode())


def decode_offset(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = _unb64(cursor).decode()
        if not raw.startswith("o:"):
            raise ValueError(raw)
        offset = int(raw[2:])
        if not 0 <= offset <= MAX_SEARCH_OFFSET:
            raise ValueError(raw)
        return offset
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _bad_cursor() from None
