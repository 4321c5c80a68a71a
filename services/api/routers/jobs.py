"""Jobs: list, submit (S3 URI or streamed upload), show, retry, cancel."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from pydantic import BeforeValidator

from earshot.jobs import service
from earshot.results import fetch_jobs
from services.api import serializers
from services.api.cursors import decode_job_cursor, encode_job_cursor
from services.api.db import run_sync
from services.api.deps import (
    DatabaseDep,
    EnqueueDep,
    ReadKey,
    SettingsDep,
    SubmitKey,
    answer,
    dispatch,
    load_job,
    tenant_scope,
)
from services.api.problems import ApiProblem, responses
from services.api.schemas import JobOut, JobPage, JobStatus
from services.api.submissions import submit_request

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_only(value: object) -> object:
    # pydantic would also read a bare number as a Unix time; the contract says RFC 3339
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2026-11-26T09:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]


@router.get("", response_model=JobPage, summary="List jobs, newest first", responses=responses(401, 403, 422))
async def list_jobs(
    db: DatabaseDep,
    key: ReadKey,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state")] = None,
    bucket: Annotated[
        str | None, Query(max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", description="S3 bucket of the source")
    ] = None,
    prefix: Annotated[
        str | None,
        Query(max_length=1024, description="Key prefix within `bucket`; without `bucket`, a prefix of the source URI"),
    ] = None,
    created_after: Annotated[IsoDateTime | None, Query(description="Inclusive (RFC 3339)")] = None,
    created_before: Annotated[IsoDateTime | None, Query(description="Exclusive (RFC 3339)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page")] = None,
) -> Response:
    source_prefix = f"s3://{bucket}/{prefix or ''}" if bucket else prefix
    if source_prefix and "\x00" in source_prefix:  # no URI holds NUL (PostgreSQL text cannot)
        return answer(serializers.job_page([], None))
    before = decode_job_cursor(cursor) if cursor else None
    async with db.reader() as conn:
        rows = await fetch_jobs(
            conn,
            tenant_id=tenant_scope(key),
            status=status,
            source_prefix=source_prefix or None,
            created_after=created_after,
            created_before=created_before,
            before=before,
            limit=limit + 1,
        )
    page = rows[:limit]
    next_cursor = encode_job_cursor(page[-1]) if len(rows) > limit else None
    return answer(serializers.job_page(page, next_cursor, with_tenant=key.admin))


def _body_spec() -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/JobCreate"}},
                "multipart/form-data": {
                    "schema": {"$ref": "#/components/schemas/UploadForm"},
                    "encoding": {"file": {"contentType": "application/octet-stream, audio/*"}},
                },
            },
        }
    }


@router.post(
    "",
    response_model=JobOut,
    status_code=201,
    summary="Submit a job: an s3:// URI (JSON) or an audio upload (multipart, streamed)",
    description=(
        "JSON: `{\"uri\": \"s3://bucket/key\", \"tasks\": [...]}`. Multipart: a `file` part plus optional "
        "`tasks` (repeated or comma-separated), `questions` and `callback_url` fields; the file is streamed "
        "to `<output_url>/uploads/<uuid>/<name>` with a size limit (413 past it, nothing stored). "
        "With an `Idempotency-Key`, a repeated request returns the first job (200) instead of a new one."
    ),
    responses={
        200: {"model": JobOut, "description": "A job with this Idempotency-Key exists already"},
        **responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503),
    },
    openapi_extra=_body_spec(),
)
async def create_job(
    request: Request,
    background: BackgroundTasks,
    db: DatabaseDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    key: SubmitKey,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
               description="Any printable ASCII; repeats return the first job"),
    ] = None,
) -> Response:
    outcome = await submit_request(request, db, settings, key, idempotency_key)
    if outcome.created:
        await dispatch(outcome.job.id, settings=settings, enqueue=enqueue, background=background)
    return answer(
        serializers.job(outcome.job, with_tenant=key.admin),
        status_code=201 if outcome.created else 200,
        headers={"Location": f"/v1/jobs/{outcome.job.id}"},
    )


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress, timings and error",
            responses=responses(401, 403, 404, 422))
async def get_job(db: DatabaseDep, key: ReadKey, job_id: str) -> Response:
    async with db.reader() as conn:
        job = await load_job(conn, key, job_id)
    return answer(serializers.job(job, with_tenant=key.admin))


@router.post(
    "/{job_id}/retry",
    response_model=JobOut,
    summary="Queue a failed or cancelled job again (partial results are kept and upserted)",
    responses=responses(401, 403, 404, 409, 422, 503),
)
async def retry_job(
    db: DatabaseDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    background: BackgroundTasks,
    key: SubmitKey,
    job_id: str,
) -> Response:
    async with db.transaction() as tx:
        job = await load_job(tx, key, job_id)
        if job.status not in ("failed", "cancelled"):
            raise ApiProblem(409, f"job is {job.status}; only failed or cancelled jobs can be retried",
                             code="not_retryable")
        await run_sync(tx, lambda s: service.reset_for_retry(s, job.id))
    await dispatch(job.id, settings=settings, enqueue=enqueue, background=background)
    async with db.reader() as conn:
        return answer(serializers.job(await load_job(conn, key, job.id), with_tenant=key.admin))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job (cancelling a cancelled job is a no-op)",
    responses=responses(401, 403, 404, 409, 422),
)
async def cancel_job(db: DatabaseDep, key: SubmitKey, job_id: str) -> Response:
    async with db.transaction() as tx:
        job = await load_job(tx, key, job_id)
        if job.status in ("succeeded", "failed"):
            raise ApiProblem(409, f"job already {job.status}", code="already_finished")
        await run_sync(tx, lambda s: service.cancel_job(s, job.id))
        return answer(serializers.job(await load_job(tx, key, job.id), with_tenant=key.admin))
