"""A job's results: transcript (JSON or an export format), summaries, events, reasoning, speech."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from earshot import exports, storage
from earshot.db import models as m
from earshot.errors import StorageError
from earshot.jobs.report import build_report
from earshot.results import Utterance
from services.api.deps import ReadKey, SessionDep, load_job, reply
from services.api.problems import ApiProblem, responses
from services.api.schemas import (
    EventOut,
    EventsOut,
    ExportName,
    ReasoningOut,
    SpeechOut,
    SummaryItem,
    SummaryOut,
    TraceOut,
    TranscriptOut,
    UtteranceOut,
)

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"])
LEVEL_ORDER = {"file": 0, "chapter": 1, "section": 2, "segment": 3, "caption": 4}
ERRORS = responses(401, 403, 404, 422)


def _utterances(session: Session, job_id: str) -> list[tuple[float, float, str]]:
    # plain columns, not ORM objects: four times faster for a long transcript
    rows = session.execute(
        select(m.Utterance.start_s, m.Utterance.end_s, m.Utterance.text)
        .where(m.Utterance.job_id == job_id)
        .order_by(m.Utterance.start_s, m.Utterance.segment_index, m.Utterance.seq)
    )
    return [(r[0], r[1], r[2]) for r in rows]


_TEXT_FORMATS = {
    name: {"schema": {"type": "string"}}
    for name in ("application/x-subrip", "text/vtt", "text/plain", "text/markdown")
}


@router.get(
    "/transcript",
    response_model=TranscriptOut,
    summary="The transcript: JSON, or SRT / WebVTT / plain text / Markdown",
    description="`format=md` renders the whole job report (summary, chapters, events, transcript).",
    responses={200: {"content": _TEXT_FORMATS, "description": "The transcript"}, **ERRORS},
)
def transcript(
    session: SessionDep,
    _key: ReadKey,
    job_id: str,
    format: Annotated[ExportName, Query(description="json, srt, vtt, txt or md")] = "json",
) -> Response:
    job = load_job(session, job_id)
    if format == "md":
        body = exports.to_markdown(build_report(session, job))
        return reply(session, body, media_type=exports.FORMATS["md"].content_type)
    rows = _utterances(session, job.id)
    if format == "json":
        # rows are trusted (typed columns): construct without validating and serialise once
        out = TranscriptOut.model_construct(
            job_id=job.id,
            status=job.status,
            utterances=[UtteranceOut.model_construct(start=s, end=e, text=t) for s, e, t in rows],
        )
        return reply(session, out)
    utterances = [Utterance(start=s, end=e, text=t) for s, e, t in rows]
    writers = {"srt": exports.to_srt, "vtt": exports.to_vtt, "txt": exports.to_txt}
    body = writers[format](utterances)
    return reply(
        session,
        body,
        media_type=exports.FORMATS[format].content_type,
        headers={"Content-Disposition": f'inline; filename="{job.id}{exports.FORMATS[format].extension}"'},
    )


@router.get("/summary", response_model=SummaryOut, summary="Summaries at every level", responses=ERRORS)
def summary(session: SessionDep, _key: ReadKey, job_id: str) -> Response:
    job = load_job(session, job_id)
    rows = sorted(
        session.scalars(select(m.Summary).where(m.Summary.job_id == job.id)),
        key=lambda s: (LEVEL_ORDER.get(s.level, 9), s.level, s.idx),
    )
    return reply(session, SummaryOut(
        job_id=job.id,
        status=job.status,  # type: ignore[arg-type]
        summary=next((s.text for s in rows if s.level == "file"), None),
        items=[
            SummaryItem(level=s.level, idx=s.idx, start=s.start_s, end=s.end_s, title=s.title, text=s.text)
            for s in rows
        ],
    ))


@router.get(
    "/events",
    response_model=EventsOut,
    summary="Timestamped sound events, optionally filtered by label and time",
    responses=ERRORS,
)
def events(
    session: SessionDep,
    _key: ReadKey,
    job_id: str,
    label: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Case-insensitive substring of the label")
    ] = None,
    start: Annotated[
        float | None, Query(ge=0, allow_inf_nan=False, description="Events that end at or after this second (an empty window, end < start, matches nothing)")
    ] = None,
    end: Annotated[
        float | None, Query(ge=0, allow_inf_nan=False, description="Events that start at or before this second")
    ] = None,
    min_duration: Annotated[
        float | None, Query(ge=0, allow_inf_nan=False, description="Events at least this long (seconds)")
    ] = None,
) -> Response:
    job = load_job(session, job_id)
    if label and "\x00" in label:  # no label holds NUL (PostgreSQL text cannot)
        return reply(session, EventsOut(job_id=job.id, status=job.status, events=[]))  # type: ignore[arg-type]
    conds = [m.Event.job_id == job.id]
    if label:
        escaped = label.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conds.append(func.lower(m.Event.label).like(f"%{escaped}%", escape="\\"))
    if start is not None:
        conds.append(m.Event.end_s >= start)
    if end is not None:
        conds.append(m.Event.start_s <= end)
    if min_duration is not None:
        conds.append(m.Event.end_s - m.Event.start_s >= min_duration)
    rows = session.scalars(select(m.Event).where(and_(*conds)).order_by(m.Event.start_s, m.Event.segment_index, m.Event.seq))
    return reply(session, EventsOut(
        job_id=job.id,
        status=job.status,  # type: ignore[arg-type]
        events=[
            EventOut(start=e.start_s, end=e.end_s, duration=e.end_s - e.start_s, label=e.label, raw=e.raw or "")
            for e in rows
        ],
    ))


@router.get("/reasoning", response_model=ReasoningOut, summary="Reasoning traces and answers", responses=ERRORS)
def reasoning(session: SessionDep, _key: ReadKey, job_id: str) -> Response:
    job = load_job(session, job_id)
    rows = session.scalars(
        select(m.ReasoningTrace)
        .where(m.ReasoningTrace.job_id == job.id)
        .order_by(m.ReasoningTrace.segment_index, m.ReasoningTrace.seq)
    )
    return reply(session, ReasoningOut(
        job_id=job.id,
        status=job.status,  # type: ignore[arg-type]
        traces=[
            TraceOut(segment_index=t.segment_index, question=t.question, thinking=t.thinking,
                               answer=t.answer, adapter=t.adapter)
            for t in rows
        ],
    ))


def _stream(uri: str) -> Iterator[bytes]:
    with storage.open_read(uri) as f:
        while chunk := f.read(256 * 1024):
            yield chunk


@router.get(
    "/speech",
    response_model=SpeechOut,
    summary="The spoken summary: a presigned URL, or the audio itself with download=true",
    responses={
        200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
              "description": "Metadata and a URL, or the WAV bytes"},
        **responses(401, 403, 404, 422, 502, 503),
    },
)
def speech(
    session: SessionDep,
    _key: ReadKey,
    job_id: str,
    download: Annotated[bool, Query(description="Stream the audio instead of returning a URL")] = False,
    expires_s: Annotated[int, Query(ge=60, le=7 * 24 * 3600, description="Lifetime of the URL")] = 3600,
) -> Response:
    job = load_job(session, job_id)
    out = session.scalar(
        select(m.SpeechOutput).where(m.SpeechOutput.job_id == job.id).order_by(m.SpeechOutput.kind)
    )
    if out is None:
        raise ApiProblem(404, "this job has no spoken output (task 'speak', once it succeeded)", code="no_speech")
    if download:
        session.close()  # the stream is read in thread hops: hold no connection meanwhile
        try:
            size = storage.head(out.uri).size
        except StorageError as exc:
            if exc.code == "not_found":
                raise ApiProblem(404, "the speech file is gone from storage", code="not_found") from None
            raise
        return StreamingResponse(
            _stream(out.uri),
            media_type="audio/wav",
            headers={"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{job.id}-{out.kind}.wav"'},
        )
    return reply(session, SpeechOut(
        job_id=job.id, kind=out.kind, uri=out.uri, url=storage.presign(out.uri, expires_s),
        duration_s=out.duration_s, voice=out.voice, sample_rate=out.sample_rate,
    ))
