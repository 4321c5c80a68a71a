"""A job's results: transcript (JSON or an export format), summaries, events, reasoning, speech."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from earshot import exports, storage
from earshot.config import Settings
from earshot.db.models import Job
from earshot.errors import StorageError
from earshot.jobs.report import build_report
from earshot.results import (
    Utterance,
    fetch_events,
    fetch_speech,
    fetch_summaries,
    fetch_traces,
    fetch_utterances,
)
from services.api import serializers
from services.api.db import run_sync
from services.api.deps import DatabaseDep, ReadKey, SettingsDep, answer, load_job
from services.api.problems import ApiProblem, responses
from services.api.schemas import EventsOut, ExportName, ReasoningOut, SpeechOut, SummaryOut, TranscriptOut

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"])
ERRORS = responses(401, 403, 404, 422)

_TEXT_FORMATS = {
    name: {"schema": {"type": "string"}}
    for name in ("application/x-subrip", "text/vtt", "text/plain", "text/markdown")
}


def _report_markdown(session: Session, job_id: str) -> str:
    job = session.get(Job, job_id)
    assert job is not None
    return exports.to_markdown(build_report(session, job))


@router.get(
    "/transcript",
    response_model=TranscriptOut,
    summary="The transcript: JSON, or SRT / WebVTT / plain text / Markdown",
    description="`format=md` renders the whole job report (summary, chapters, events, transcript).",
    responses={200: {"content": _TEXT_FORMATS, "description": "The transcript"}, **ERRORS},
)
async def transcript(
    db: DatabaseDep,
    key: ReadKey,
    job_id: str,
    format: Annotated[ExportName, Query(description="json, srt, vtt, txt or md")] = "json",
) -> Response:
    async with db.reader() as conn:
        job = await load_job(conn, key, job_id)
        if format == "md":
            body = await run_sync(conn, lambda s: _report_markdown(s, job.id))
            return answer(body, media_type=exports.FORMATS["md"].content_type)
        rows = await fetch_utterances(conn, job.id)
    if format == "json":
        return answer(serializers.transcript(job.id, job.status, rows))
    utterances = [Utterance(start=s, end=e, text=t) for s, e, t in rows]
    writers = {"srt": exports.to_srt, "vtt": exports.to_vtt, "txt": exports.to_txt}
    return answer(
        writers[format](utterances),
        media_type=exports.FORMATS[format].content_type,
        headers={"Content-Disposition": f'inline; filename="{job.id}{exports.FORMATS[format].extension}"'},
    )


@router.get("/summary", response_model=SummaryOut, summary="Summaries at every level", responses=ERRORS)
async def summary(db: DatabaseDep, key: ReadKey, job_id: str) -> Response:
    async with db.reader() as conn:
        job = await load_job(conn, key, job_id)
        rows = await fetch_summaries(conn, job.id)
    return answer(serializers.summaries(job.id, job.status, rows))


@router.get(
    "/events",
    response_model=EventsOut,
    summary="Timestamped sound events, optionally filtered by label and time",
    responses=ERRORS,
)
async def events(
    db: DatabaseDep,
    key: ReadKey,
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
    async with db.reader() as conn:
        job = await load_job(conn, key, job_id)
        rows = await fetch_events(conn, job.id, label=label, start=start, end=end, min_duration=min_duration)
    return answer(serializers.events(job.id, job.status, rows))


@router.get("/reasoning", response_model=ReasoningOut, summary="Reasoning traces and answers", responses=ERRORS)
async def reasoning(db: DatabaseDep, key: ReadKey, job_id: str) -> Response:
    async with db.reader() as conn:
        job = await load_job(conn, key, job_id)
        rows = await fetch_traces(conn, job.id)
    return answer(serializers.reasoning(job.id, job.status, rows))


def _stream(uri: str, settings: Settings) -> Iterator[bytes]:
    with storage.open_read(uri, settings=settings) as f:
        while chunk := f.read(256 * 1024):
            yield chunk


@router.get(
    "/speech",
    response_model=SpeechOut,
    summary="The spoken summary: a presigned URL, or the audio itself with download=true",
    description="The URL lives `expires_s` seconds: 15 minutes by default, at most "
                "`EARSHOT_API_PRESIGN_MAX_S` (one hour or less).",
    responses={
        200: {"content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
              "description": "Metadata and a URL, or the WAV bytes"},
        **responses(401, 403, 404, 422, 502, 503),
    },
)
async def speech(
    db: DatabaseDep,
    key: ReadKey,
    settings: SettingsDep,
    job_id: str,
    download: Annotated[bool, Query(description="Stream the audio instead of returning a URL")] = False,
    expires_s: Annotated[
        int | None, Query(ge=60, le=3600, description="Lifetime of the URL in seconds (default 900)")
    ] = None,
) -> Response:
    async with db.reader() as conn:
        job = await load_job(conn, key, job_id)
        out = await fetch_speech(conn, job.id)
    if out is None:
        raise ApiProblem(404, "this job has no spoken output (task 'speak', once it succeeded)", code="no_speech")
    if download:
        try:
            size = (await run_in_threadpool(partial(storage.head, out.uri, settings=settings))).size
        except StorageError as exc:
            if exc.code == "not_found":
                raise ApiProblem(404, "the speech file is gone from storage", code="not_found") from None
            raise
        return StreamingResponse(
            _stream(out.uri, settings),
            media_type="audio/wav",
            headers={"Content-Length": str(size),
                     "Content-Disposition": f'attachment; filename="{job.id}-{out.kind}.wav"'},
        )
    lifetime = min(expires_s or settings.api_presign_default_s, settings.api_presign_max_s)
    url = await run_in_threadpool(partial(storage.presign, out.uri, lifetime, settings=settings))
    return answer(serializers.speech(job.id, out, url))
