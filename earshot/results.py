"""Result types shared by the engines, the pipeline, the exporters, the API and the CLI, and
the API's reads of stored results (async Core queries, at the end).

All times are seconds. Segment-level results carry times relative to the segment; the
pipeline stores them on the file's timeline.
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import TYPE_CHECKING, Any, TypeAlias

from psycopg.rows import namedtuple_row
from pydantic import BaseModel, Field
from sqlalchemy import Float, Integer, Row, Select, bindparam, func, select

from earshot.db import models as m

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


class Utterance(BaseModel):
    start: float
    end: float
    text: str


class Event(BaseModel):
    start: float
    end: float
    label: str
    raw: str = ""


class Reasoning(BaseModel):
    question: str
    thinking: str
    answer: str
    adapter: bool = Field(description="True when the think LoRA adapter produced this trace")


class Chapter(BaseModel):
    start: float
    end: float
    title: str
    summary: str = ""


class SegmentInfo(BaseModel):
    index: int
    start: float
    end: float
    status: str


class ErrorInfo(BaseModel):
    code: str
    message: str


class JobReport(BaseModel):
    """The whole report of a job (``earshot.jobs.report.build_report``): what `earshot run --json` prints."""

    job_id: str
    source: str
    status: str
    tasks: list[str] = Field(default_factory=list)
    duration: float | None = None
    segments: list[SegmentInfo] = Field(default_factory=list)
    transcript: list[Utterance] = Field(default_factory=list)
    summary: str | None = None
    chapters: list[Chapter] = Field(default_factory=list)
    captions: list[str] = Field(default_factory=list)
    events: list[Event] = Field(default_factory=list)
    reasoning: list[Reasoning] = Field(default_factory=list)
    speech_uri: str | None = None
    outputs: dict[str, str] = Field(default_factory=dict)
    grounding: dict[str, int] = Field(
        default_factory=dict,
        description="event counts: kept, merged across segment cuts, dropped as invalid",
    )
    notes: list[str] = Field(default_factory=list, description="caveats about these results")
    error: ErrorInfo | None = None


# --------------------------------------------------------------------------- reading them back
# The API's reads: plain columns with SQLAlchemy Core on an async connection (no ORM objects, no
# relationship loading), each function one query. ``tenant_id`` limits jobs to that tenant's;
# None means every tenant (admin keys). Another tenant's job reads exactly like a missing one.
#
# SQLAlchemy writes every statement, with every value a bind parameter, so each statement (each
# combination of optional filters) is built once. On PostgreSQL it is compiled once and run by
# psycopg itself on the pooled connection: SQLAlchemy's execution and result layer cost twice
# what PostgreSQL needs for a job lookup, and compiling per request cost the events route a
# sixth of its time (bench/api.py). psycopg already returns JSON as Python values and
# timestamps with their zone; SQLite needs SQLAlchemy's type handling, so there everything runs
# through SQLAlchemy.

_jobs = m.Job.__table__
_audio = m.AudioFile.__table__
_utt = m.Utterance.__table__
_sum = m.Summary.__table__
_ev = m.Event.__table__
_tr = m.ReasoningTrace.__table__
_speech = m.SpeechOutput.__table__

# a result row of any width (SQLAlchemy types rows by their columns)
AnyRow: TypeAlias = Row[*tuple[Any, ...]]

JOB_COLUMNS = (
    _jobs.c.id, _jobs.c.status, _jobs.c.source_uri, _jobs.c.tasks, _jobs.c.questions, _jobs.c.engine,
    _jobs.c.model_id, _jobs.c.progress, _jobs.c.attempts, _jobs.c.segment_count, _jobs.c.created_at,
    _jobs.c.updated_at, _jobs.c.started_at, _jobs.c.finished_at, _jobs.c.timings, _jobs.c.error_code,
    _jobs.c.error_message, _jobs.c.options, _audio.c.duration_s, _jobs.c.tenant_id,
)
_JOB_FROM = _jobs.outerjoin(_audio, _audio.c.id == _jobs.c.audio_file_id)


# id(statement) -> its SQL and the values it binds itself (a LIMIT 1, a literal); the statements
# live for the process, so an id is never reused
_COMPILED: dict[int, tuple[str, dict[str, Any]]] = {}


async def static_rows(conn: AsyncConnection, stmt: Select[Any], params: dict[str, Any]) -> list[Any]:
    """Rows of a statement that is never rebuilt (module level, or one per shape from a cached
    builder), by attribute or position; its values come in ``params``."""
    if conn.dialect.name != "postgresql":
        return list((await conn.execute(stmt, params)).all())
    compiled = _COMPILED.get(id(stmt))
    if compiled is None:
        done = stmt.compile(dialect=conn.dialect)
        compiled = _COMPILED[id(stmt)] = (str(done), dict(done.params))
    sql, own = compiled
    driver: Any = (await conn.get_raw_connection()).driver_connection
    async with driver.cursor(row_factory=namedtuple_row) as cur:
        await cur.execute(sql, {**own, **params} if own else params)
        return await cur.fetchall()


def like_escaped(text: str) -> str:
    """``text`` matched literally by LIKE ... ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_JOB_BY_ID = select(*JOB_COLUMNS).select_from(_JOB_FROM).where(_jobs.c.id == bindparam("job_id"))
_JOB_BY_ID_TENANT = _JOB_BY_ID.where(_jobs.c.tenant_id == bindparam("tenant_id"))


async def fetch_job(conn: AsyncConnection, job_id: str, *, tenant_id: str | None = None) -> AnyRow | None:
    """The job with its audio duration, or None (missing, or another tenant's: the same answer)."""
    if tenant_id is not None:
        rows = await static_rows(conn, _JOB_BY_ID_TENANT, {"job_id": job_id, "tenant_id": tenant_id})
    else:
        rows = await static_rows(conn, _JOB_BY_ID, {"job_id": job_id})
    return rows[0] if rows else None


# Statements with optional filters: one statement per combination of the filters present (a
# cached builder), with every value a bind parameter, so each combination compiles once.
@cache
def _jobs_stmt(tenant: bool, status: bool, prefix: bool, after: bool, before: bool, cursor: bool) -> Select[Any]:
    q = select(*JOB_COLUMNS).select_from(_JOB_FROM)
    if tenant:
        q = q.where(_jobs.c.tenant_id == bindparam("tenant_id"))
    if status:
        q = q.where(_jobs.c.status == bindparam("status"))
    if prefix:
        q = q.where(_jobs.c.source_uri.like(bindparam("prefix"), escape="\\"))
    if after:
        q = q.where(_jobs.c.created_at >= bindparam("created_after", type_=_jobs.c.created_at.type))
    if before:
        q = q.where(_jobs.c.created_at < bindparam("created_before", type_=_jobs.c.created_at.type))
    if cursor:
        ts = bindparam("cursor_ts", type_=_jobs.c.created_at.type)
        q = q.where((_jobs.c.created_at < ts) | ((_jobs.c.created_at == ts) & (_jobs.c.id < bindparam("cursor_id"))))
    return q.order_by(_jobs.c.created_at.desc(), _jobs.c.id.desc()).limit(bindparam("limit", type_=Integer))


async def fetch_jobs(
    conn: AsyncConnection,
    *,
    tenant_id: str | None = None,
    status: str | None = None,
    source_prefix: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    before: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[AnyRow]:
    """Newest first; ``before`` is a (created_at, id) keyset cursor from the previous page."""
    stmt = _jobs_stmt(tenant_id is not None, bool(status), bool(source_prefix), created_after is not None,
                      created_before is not None, before is not None)
    params: dict[str, Any] = {"tenant_id": tenant_id, "status": status, "created_after": created_after,
                              "created_before": created_before, "limit": limit}
    if source_prefix:
        params["prefix"] = like_escaped(source_prefix) + "%"
    if before:
        params["cursor_ts"], params["cursor_id"] = before
    return await static_rows(conn, stmt, params)


_UTTERANCES = (
    select(_utt.c.start_s, _utt.c.end_s, _utt.c.text)
    .where(_utt.c.job_id == bindparam("job_id"))
    .order_by(_utt.c.start_s, _utt.c.segment_index, _utt.c.seq)
)


async def fetch_utterances(conn: AsyncConnection, job_id: str) -> list[AnyRow]:
    """(start_s, end_s, text) in time order."""
    return await static_rows(conn, _UTTERANCES, {"job_id": job_id})


SUMMARY_LEVEL_ORDER = {"file": 0, "chapter": 1, "section": 2, "segment": 3, "caption": 4}
_SUMMARIES = select(_sum.c.level, _sum.c.idx, _sum.c.start_s, _sum.c.end_s, _sum.c.title, _sum.c.text).where(
    _sum.c.job_id == bindparam("job_id")
)


async def fetch_summaries(conn: AsyncConnection, job_id: str) -> list[AnyRow]:
    """Every summary, ordered by level (file first) then index."""
    rows = await static_rows(conn, _SUMMARIES, {"job_id": job_id})
    return sorted(rows, key=lambda s: (SUMMARY_LEVEL_ORDER.get(s.level, 9), s.level, s.idx))


@cache
def _events_stmt(label: bool, start: bool, end: bool, min_duration: bool) -> Select[Any]:
    q = select(_ev.c.start_s, _ev.c.end_s, _ev.c.label, _ev.c.raw).where(_ev.c.job_id == bindparam("job_id"))
    if label:
        q = q.where(func.lower(_ev.c.label).like(bindparam("label"), escape="\\"))
    if start:
        q = q.where(_ev.c.end_s >= bindparam("start", type_=Float))
    if end:
        q = q.where(_ev.c.start_s <= bindparam("end", type_=Float))
    if min_duration:
        q = q.where(_ev.c.end_s - _ev.c.start_s >= bindparam("min_duration", type_=Float))
    return q.order_by(_ev.c.start_s, _ev.c.segment_index, _ev.c.seq)


async def fetch_events(
    conn: AsyncConnection,
    job_id: str,
    *,
    label: str | None = None,
    start: float | None = None,
    end: float | None = None,
    min_duration: float | None = None,
) -> list[AnyRow]:
    """Events overlapping [start, end], with a label substring (any case), at least so long."""
    if label and "\x00" in label:  # no label holds NUL (PostgreSQL text cannot)
        return []
    stmt = _events_stmt(bool(label), start is not None, end is not None, min_duration is not None)
    params: dict[str, Any] = {"job_id": job_id, "start": start, "end": end, "min_duration": min_duration}
    if label:
        params["label"] = f"%{like_escaped(label.lower())}%"
    return await static_rows(conn, stmt, params)


_TRACES = (
    select(_tr.c.segment_index, _tr.c.question, _tr.c.thinking, _tr.c.answer, _tr.c.adapter)
    .where(_tr.c.job_id == bindparam("job_id"))
    .order_by(_tr.c.segment_index, _tr.c.seq)
)


async def fetch_traces(conn: AsyncConnection, job_id: str) -> list[AnyRow]:
    return await static_rows(conn, _TRACES, {"job_id": job_id})


_SPEECH = (
    select(_speech.c.kind, _speech.c.uri, _speech.c.duration_s, _speech.c.voice, _speech.c.sample_rate)
    .where(_speech.c.job_id == bindparam("job_id"))
    .order_by(_speech.c.kind)
    .limit(1)
)


async def fetch_speech(conn: AsyncConnection, job_id: str) -> AnyRow | None:
    rows = await static_rows(conn, _SPEECH, {"job_id": job_id})
    return rows[0] if rows else None
