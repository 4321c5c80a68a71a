"""Rows to response bodies, serialised once with orjson.

The response models in ``schemas.py`` document these shapes in the OpenAPI; routes build the
bytes here straight from query rows (typed columns: nothing to validate) and answer with
``deps.answer``. ``tests/integration/test_api_schemathesis.py`` validates the bodies against
those models (schemathesis' response schema conformance check).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from pydantic import BaseModel

from earshot.search import SearchHit

# naive datetimes come from SQLite, which drops the zone of UTC values
_OPTS = orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z


def dumps(data: Any) -> bytes:
    if isinstance(data, BaseModel):
        return data.model_dump_json().encode()
    return orjson.dumps(data, option=_OPTS)


def job(r: Any, *, with_tenant: bool = False) -> dict[str, Any]:
    """A ``results.JOB_COLUMNS`` row as ``JobOut``."""
    options = r.options if isinstance(r.options, dict) else {}
    outputs = options.get("outputs", {})
    out = {
        "id": r.id,
        "status": r.status,
        "source": r.source_uri,
        "tasks": list(r.tasks or []),
        "questions": list(r.questions or []),
        "engine": r.engine,
        "model_id": r.model_id,
        "progress": min(1.0, max(0.0, float(r.progress or 0.0))),
        "attempts": r.attempts,
        "segment_count": r.segment_count,
        "duration_s": r.duration_s,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "timings": {k: float(v) for k, v in (r.timings or {}).items()},
        "error": {"code": r.error_code, "message": r.error_message or ""} if r.error_code else None,
        "outputs": {str(k): str(v) for k, v in outputs.items()} if isinstance(outputs, dict) else {},
    }
    if with_tenant:
        out["tenant_id"] = r.tenant_id
    return out


def job_page(rows: Sequence[Any], next_cursor: str | None, *, with_tenant: bool = False) -> dict[str, Any]:
    return {"jobs": [job(r, with_tenant=with_tenant) for r in rows], "next_cursor": next_cursor}


def transcript(job_id: str, status: str, rows: Iterable[Any]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "utterances": [{"start": s, "end": e, "text": t} for s, e, t in rows],
    }


def summaries(job_id: str, status: str, rows: Sequence[Any]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "summary": next((s.text for s in rows if s.level == "file"), None),
        "items": [
            {"level": s.level, "idx": s.idx, "start": s.start_s, "end": s.end_s, "title": s.title, "text": s.text}
            for s in rows
        ],
    }


def events(job_id: str, status: str, rows: Iterable[Any]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "events": [
            {"start": e.start_s, "end": e.end_s, "duration": e.end_s - e.start_s, "label": e.label, "raw": e.raw or ""}
            for e in rows
        ],
    }


def reasoning(job_id: str, status: str, rows: Iterable[Any]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "status": status,
        "traces": [
            {"segment_index": t.segment_index, "question": t.question, "thinking": t.thinking,
             "answer": t.answer, "adapter": bool(t.adapter)}
            for t in rows
        ],
    }


def speech(job_id: str, row: Any, url: str) -> dict[str, Any]:
    return {"job_id": job_id, "kind": row.kind, "uri": row.uri, "url": url, "duration_s": row.duration_s,
            "voice": row.voice, "sample_rate": row.sample_rate}


def search(query: str, hits: Iterable[SearchHit], next_cursor: str | None) -> dict[str, Any]:
    return {
        "query": query,
        "hits": [
            {"kind": h.kind, "job_id": h.job_id, "source": h.source, "start": h.start, "end": h.end,
             "text": h.text, "snippet": h.snippet, "score": h.score, "level": h.level}
            for h in hits
        ],
        "next_cursor": next_cursor,
    }


def key(k: Any) -> dict[str, Any]:
    """An ``ApiKey`` (row or ORM object) as ``ApiKeyOut``: never the hash."""
    return {"id": k.id, "name": k.name, "prefix": k.prefix, "scopes": list(k.scopes or []),
            "tenant_id": k.tenant_id, "created_at": k.created_at, "last_used_at": k.last_used_at, "revoked_at": k.revoked_at}
