"""Full-text search over transcripts (utterances) and summaries.

PostgreSQL: ``websearch_to_tsquery`` against the stored ``search_tsv`` columns (GIN indexed,
migration 0002_api), ranked with ``ts_rank_cd`` (cover density: more and closer matches rank
higher; summary titles weigh more than their text), snippets from ``ts_headline``.

SQLite (the embedded mode) has no such machinery: every word of the query must occur in the
text (case-insensitive ``LIKE``) and hits rank by how often the words occur. Good enough for a
laptop; the REST contract is the same.

Times in hits are absolute (seconds on the file's timeline), as stored.

It runs on an async connection (the API's); ``tenant_id`` limits hits to that tenant's jobs
(before ranking and paging, so nothing of another tenant shows), None searches every job.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from earshot.db import models as m
from earshot.results import like_escaped

__all__ = ["KINDS", "SearchHit", "SearchPage", "search"]

TS_CONFIG = "english"
KINDS: tuple[str, ...] = ("utterance", "summary")
HitKind = Literal["utterance", "summary"]

# ts_headline marks matches with these; the rest of the text is HTML-escaped afterwards, so a
# snippet is safe to render and only ever contains <mark> tags.
_START, _STOP = "\x02", "\x03"
_HEADLINE_OPTS = f"StartSel={_START}, StopSel={_STOP}, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=\" … \""


@dataclass(frozen=True)
class SearchHit:
    kind: HitKind
    id: int
    job_id: str
    source: str
    start: float
    end: float
    text: str
    snippet: str
    score: float
    level: str | None = None  # summaries: segment, section, file, caption, chapter


@dataclass(frozen=True)
class SearchPage:
    hits: list[SearchHit]
    has_more: bool


def safe_snippet(raw: str) -> str:
    escaped = html.escape(raw.replace("<mark>", "").replace("</mark>", ""), quote=False)
    return escaped.replace(_START, "<mark>").replace(_STOP, "</mark>")


async def search(
    conn: AsyncConnection,
    query: str,
    *,
    limit: int = 20,
    offset: int = 0,
    job_id: str | None = None,
    kinds: Sequence[str] = KINDS,
    tenant_id: str | None = None,
) -> SearchPage:
    """Best matches first; ``has_more`` tells whether another page exists."""
    # PostgreSQL text cannot hold NUL; it separates nothing a user meant to search for
    query = query.replace("\x00", " ").strip()
    kinds = [k for k in KINDS if k in kinds]
    if not query or not kinds or limit <= 0:
        return SearchPage([], False)
    if conn.dialect.name == "postgresql":
        rows = await _search_postgres(conn, query, limit + 1, offset, job_id, kinds, tenant_id)
    else:
        rows = await _search_fallback(conn, query, limit + 1, offset, job_id, kinds, tenant_id)
    return SearchPage(rows[:limit], len(rows) > limit)


def postgres_sql(kinds: Sequence[str], *, job_filter: bool, tenant_filter: bool) -> str:
    """The ranked query (the bench's floor app runs the same text)."""
    job_filter_u = "AND u.job_id = :job_id" if job_filter else ""
    job_filter_s = "AND s.job_id = :job_id" if job_filter else ""
    parts = []
    if "utterance" in kinds:
        parts.append(
            f"""SELECT 'utterance' AS kind, u.id, u.job_id, u.start_s, u.end_s, u.text,
                       NULL::text AS level, ts_rank_cd(u.search_tsv, q.query) AS score
                FROM utterances u, q WHERE u.search_tsv @@ q.query {job_filter_u}"""
        )
    if "summary" in kinds:
        parts.append(
            f"""SELECT 'summary' AS kind, s.id, s.job_id, s.start_s, s.end_s,
                       CASE WHEN s.title IS NULL OR s.title = '' THEN s.text
                            ELSE s.title || ': ' || s.text END AS text,
                       s.level, ts_rank_cd(s.search_tsv, q.query) AS score
                FROM summaries s, q WHERE s.search_tsv @@ q.query {job_filter_s}"""
        )
    # another tenant's rows are dropped before ranking and paging, so pages and has_more
    # never reveal them
    tenant_join = "JOIN jobs tj ON tj.id = h.job_id AND tj.tenant_id = :tenant_id" if tenant_filter else ""
    return f"""
        WITH q AS (SELECT websearch_to_tsquery('{TS_CONFIG}', :query) AS query),
        hits AS ({" UNION ALL ".join(parts)}),
        page AS (SELECT h.* FROM hits h {tenant_join}
                 ORDER BY h.score DESC, h.kind DESC, h.id LIMIT :limit OFFSET :offset)
        SELECT page.kind, page.id, page.job_id, page.start_s, page.end_s, page.text, page.level,
               page.score, j.source_uri,
               ts_headline('{TS_CONFIG}', page.text, q.query, :opts) AS snippet
        FROM page JOIN jobs j ON j.id = page.job_id, q
        ORDER BY page.score DESC, page.kind DESC, page.id
    """


def postgres_params(query: str, limit: int, offset: int, job_id: str | None, tenant_id: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"query": query, "limit": limit, "offset": offset, "opts": _HEADLINE_OPTS}
    if job_id:
        params["job_id"] = job_id
    if tenant_id is not None:
        params["tenant_id"] = tenant_id
    return params


async def _search_postgres(
    conn: AsyncConnection, query: str, limit: int, offset: int, job_id: str | None, kinds: Sequence[str],
    tenant_id: str | None,
) -> list[SearchHit]:
    sql = postgres_sql(kinds, job_filter=bool(job_id), tenant_filter=tenant_id is not None)
    result = await conn.execute(text(sql), postgres_params(query, limit, offset, job_id, tenant_id))
    return [
        SearchHit(
            kind=r.kind,
            id=int(r.id),
            job_id=r.job_id,
            source=r.source_uri,
            start=float(r.start_s),
            end=float(r.end_s),
            text=r.text,
            snippet=safe_snippet(r.snippet or ""),
            score=float(r.score),
            level=r.level,
        )
        for r in result
    ]


_WORD = re.compile(r"\w+", re.UNICODE)
FALLBACK_CANDIDATES = 5000


def _fallback_snippet(body: str, words: Sequence[str], width: int = 160) -> str:
    lowered = body.lower()
    first = min((i for i in (lowered.find(w) for w in words) if i >= 0), default=0)
    start = max(0, first - width // 3)
    piece = body[start : start + width]
    escaped = html.escape(piece, quote=False)
    pattern = "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))
    escaped = re.sub(pattern, lambda m: f"<mark>{m.group(0)}</mark>", escaped, flags=re.IGNORECASE)
    return ("… " if start > 0 else "") + escaped + (" …" if start + width < len(body) else "")


def _like(word: str) -> str:
    return f"%{like_escaped(word)}%"


async def _search_fallback(
    conn: AsyncConnection, query: str, limit: int, offset: int, job_id: str | None, kinds: Sequence[str],
    tenant_id: str | None,
) -> list[SearchHit]:
    words = [w.lower() for w in _WORD.findall(query)]
    if not words:
        return []
    jobs = m.Job.__table__
    u_t, s_t = m.Utterance.__table__, m.Summary.__table__
    # (kind, id, job_id, start, end, text, level)
    candidates: list[tuple[HitKind, int, str, float, float, str, str | None]] = []
    if "utterance" in kinds:
        u = select(u_t.c.id, u_t.c.job_id, u_t.c.start_s, u_t.c.end_s, u_t.c.text).where(
            *(u_t.c.text.ilike(_like(w), escape="\\") for w in words)
        )
        if job_id:
            u = u.where(u_t.c.job_id == job_id)
        if tenant_id is not None:
            u = u.where(u_t.c.job_id.in_(select(jobs.c.id).where(jobs.c.tenant_id == tenant_id)))
        candidates += [
            ("utterance", r.id, r.job_id, r.start_s, r.end_s, r.text, None)
            for r in await conn.execute(u.limit(FALLBACK_CANDIDATES))
        ]
    if "summary" in kinds:
        s = select(s_t.c.id, s_t.c.job_id, s_t.c.start_s, s_t.c.end_s, s_t.c.title, s_t.c.text, s_t.c.level).where(
            *(
                or_(s_t.c.text.ilike(_like(w), escape="\\"), s_t.c.title.ilike(_like(w), escape="\\"))
                for w in words
            )
        )
        if job_id:
            s = s.where(s_t.c.job_id == job_id)
        if tenant_id is not None:
            s = s.where(s_t.c.job_id.in_(select(jobs.c.id).where(jobs.c.tenant_id == tenant_id)))
        candidates += [
            ("summary", r.id, r.job_id, r.start_s, r.end_s, f"{r.title}: {r.text}" if r.title else r.text, r.level)
            for r in await conn.execute(s.limit(FALLBACK_CANDIDATES))
        ]

    def score(body: str) -> float:
        lowered = body.lower()
        return sum(lowered.count(w) for w in words) / (1.0 + len(lowered) / 500.0)

    scored = sorted(
        ((score(c[5]), c) for c in candidates),
        key=lambda item: (-item[0], item[1][0] != "utterance", item[1][1]),  # as on PostgreSQL
    )
    page = scored[offset : offset + limit]
    sources: dict[str, str] = {}
    if page:
        rows = await conn.execute(select(jobs.c.id, jobs.c.source_uri).where(jobs.c.id.in_({c[2] for _, c in page})))
        sources = {r[0]: r[1] for r in rows}
    return [
        SearchHit(
            kind=kind,
            id=rid,
            job_id=jid,
            source=sources.get(jid, ""),
            start=start,
            end=end,
            text=body,
            snippet=_fallback_snippet(body, words),
            score=round(value, 6),
            level=level,
        )
        for value, (kind, rid, jid, start, end, body, level) in page
    ]
