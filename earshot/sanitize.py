"""Text that PostgreSQL will store: model output may hold characters it refuses.

PostgreSQL's ``text`` cannot hold NUL, and UTF-8 cannot encode lone surrogates (which Python
strings can hold, e.g. from ``surrogateescape`` decoding). Either makes the INSERT fail and,
before this, failed the whole job. Both are replaced with U+FFFD so the rest of the text, and
its length, survive.
"""

from __future__ import annotations

import re
from typing import Any, overload

__all__ = ["install_text_guard", "pg_json", "pg_text"]

_REFUSED = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


@overload
def pg_text(text: str) -> str: ...
@overload
def pg_text(text: None) -> None: ...
def pg_text(text: str | None) -> str | None:
    if text is None:
        return None
    return _REFUSED.sub(REPLACEMENT, text)


def pg_json(value: Any) -> Any:
    """``pg_text`` applied to every string (keys included) of a JSON-like value."""
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, dict):
        return {pg_json(k): pg_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [pg_json(v) for v in value]
    return value


def _clean_row(mapper: Any, connection: Any, target: Any) -> None:
    for attr in mapper.column_attrs:
        value = target.__dict__.get(attr.key)
        if isinstance(value, str):
            cleaned = pg_text(value)
        elif isinstance(value, dict | list):
            cleaned = pg_json(value)
        else:
            continue
        if cleaned != value:
            setattr(target, attr.key, cleaned)


def install_text_guard(base: type[Any]) -> None:
    """Clean every ORM row of ``base``'s tables as it is inserted or updated."""
    from sqlalchemy import event

    for name in ("before_insert", "before_update"):
        if not event.contains(base, name, _clean_row):
            event.listen(base, name, _clean_row, propagate=True)
