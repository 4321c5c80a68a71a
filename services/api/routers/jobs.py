"""Jobs: list, submit (S3 URI or streamed upload), show, retry, cancel."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import shutil
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from earshot.config import Settings
from earshot.db.models import AudioFile, Job
from earshot.db.session import session_scope
from earshot.errors import EngineUnavailable
from earshot.jobs import service
from earshot.jobs.submit import submit
from services.api.deps import (
    EnqueueDep,
    Enqueuer,
    ReadKey,
    SessionDep,
    SettingsDep,
    SubmitKey,
    load_job,
    reply,
)
from services.api.problems import ApiProblem, responses
from services.api.schemas import (
    CALLBACK_URL,
    QUESTION,
    ErrorOut,
    JobCreate,
    JobOut,
    JobPage,
    JobStatus,
    TaskName,
)
from services.api.upload import receive_multipart, store_upload

log = logging.getLogger("earshot.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_JSON_BODY = 64 * 1024
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _iso_only(value: object) -> object:
    # pydantic would also read a bare number as a Unix time; the contract says RFC 3339
    if isinstance(value, str) and not _ISO_DATE.match(value):
        raise ValueError("expected an RFC 3339 date-time, e.g. 2026-11-26T09:00:00Z")
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_only)]
IDEMPOTENCY_NAMESPACE = "api:"
JOB_ID_PATH = "Job id (a UUID)"


def job_out(job: Job, duration_s: float | None = None, *, duration_known: bool = False) -> JobOut:
    if not duration_known:
        duration_s = job.audio_file.duration_s if job.audio_file is not None else None
    options = job.options if isinstance(job.options, dict) else {}
    outputs = options.get("outputs", {})
    return JobOut(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        source=job.source_uri,
        tasks=list(job.tasks or []),
        questions=list(job.questions or []),
        engine=job.engine,
        model_id=job.model_id,
        progress=min(1.0, max(0.0, float(job.progress or 0.0))),
        attempts=job.attempts,
        segment_count=job.segment_count,
        duration_s=duration_s,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        timings={k: float(v) for k, v in (job.timings or {}).items()},
        error=ErrorOut(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        outputs={str(k): str(v) for k, v in outputs.items()} if isinstance(outputs, dict) else {},
    )


# --------------------------------------------------------------------------- cursors


def encode_cursor(job: Job) -> str:
    raw = json.dumps({"t": job.created_at.isoformat(), "id": job.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        return datetime.fromisoformat(data["t"]), str(data["id"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ApiProblem(
            422, "cursor is not one this API returned", code="bad_cursor",
            errors=[{"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}],
        ) from None


@router.get(
    "",
    response_model=JobPage,
    summary="List jobs, newest first",
    responses=responses(401, 403, 422),
)
def list_jobs(
    session: SessionDep,
    _key: ReadKey,
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
        return reply(session, JobPage(jobs=[], next_cursor=None))
    before = decode_cursor(cursor) if cursor else None
    jobs = service.list_jobs(
        session,
        status=status,
        source_prefix=source_prefix or None,
        created_after=created_after,
        created_before=created_before,
        limit=limit + 1,
        before=before,
    )
    page = jobs[:limit]
    durations: dict[str, float | None] = {}
    if page:
        rows = session.execute(
            select(AudioFile.id, AudioFile.duration_s).where(AudioFile.id.in_({j.audio_file_id for j in page}))
        )
        durations = {r[0]: r[1] for r in rows}
    return reply(session, JobPage(
        jobs=[job_out(j, durations.get(j.audio_file_id), duration_known=True) for j in page],
        next_cursor=encode_cursor(page[-1]) if len(jobs) > limit else None,
    ))


# --------------------------------------------------------------------------- submit


class _FormFields(BaseModel):
    tasks: list[TaskName] | None = None
    questions: list[QUESTION] = Field(default_factory=list, max_length=20)
    callback_url: str | None = Field(default=None, max_length=2000, pattern=CALLBACK_URL)


def _form_fields(fields: dict[str, list[str]]) -> _FormFields:
    unknown = sorted(set(fields) - {"tasks", "questions", "callback_url"})
    if unknown:
        raise ApiProblem(422, f"unknown form field(s): {', '.join(unknown)}", code="validation_error")
    data: dict[str, Any] = {}
    if "tasks" in fields:
        data["tasks"] = [t.strip() for v in fields["tasks"] for t in v.split(",") if t.strip()] or None
    if "questions" in fields:
        data["questions"] = [q for q in fields["questions"] if q.strip()]
    if "callback_url" in fields:
        if len(fields["callback_url"]) > 1:
            raise ApiProblem(422, "callback_url given more than once", code="validation_error")
        data["callback_url"] = fields["callback_url"][0] or None
    try:
        return _FormFields.model_validate(data)
    except ValidationError as exc:
        raise _body_errors(exc) from None


def _body_errors(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False, include_input=False)]
    )


async def _read_json(request: Request) -> JobCreate:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_JSON_BODY:
        raise ApiProblem(413, f"a JSON body is at most {MAX_JSON_BODY} bytes", code="too_large")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_JSON_BODY:
            raise ApiProblem(413, f"a JSON body is at most {MAX_JSON_BODY} bytes", code="too_large")
    try:
        return JobCreate.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise _body_errors(exc) from None


def _existing(session: Session, key: str) -> JobOut | None:
    """The job created earlier with this key; the connection goes back to the pool after."""
    try:
        job = session.scalar(select(Job).where(Job.idempotency_key == key))
        return job_out(job) if job is not None else None
    finally:
        session.close()


def _submit(
    session: Session,
    settings: Settings,
    uri: str,
    tasks: list[str] | None,
    questions: list[str],
    callback_url: str | None,
    idempotency_key: str | None,
) -> tuple[JobOut, bool]:
    job, created = submit(
        session,
        uri,
        tasks=tasks or list(settings.default_tasks),
        engine=settings.engine,
        questions=questions,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
    )
    session.commit()
    out = job_out(job)
    session.close()
    return out, created


def _run_in_process(enqueue: Enqueuer, job_id: str) -> None:
    """Embedded mode (no broker): the job runs after the response, in a worker thread."""
    try:
        enqueue(job_id)
    except Exception as exc:
        log.exception("job %s failed in process", job_id)
        with session_scope() as s:
            service.fail_job(s, job_id, exc)


async def dispatch(
    session: Session, settings: Settings, enqueue: Enqueuer, background: BackgroundTasks, job_id: str
) -> None:
    """Queue a job. With a broker, a queue outage fails the job and answers 503."""
    if settings.broker_url is None:
        background.add_task(_run_in_process, enqueue, job_id)
        return
    try:
        await run_in_threadpool(enqueue, job_id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job_id)
        reason = EngineUnavailable(f"the queue refused the job: {exc}", code="enqueue_failed")

        def fail() -> None:
            service.fail_job(session, job_id, reason)
            session.commit()
            session.close()

        await run_in_threadpool(fail)
        raise ApiProblem(503, "the job queue is unavailable; retry the job later", code="queue_unavailable",
                         headers={"Retry-After": "10"}) from None


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
        **responses(400, 401, 403, 413, 415, 422, 502, 503),
    },
    openapi_extra=_body_spec(),
)
async def create_job(
    request: Request,
    response: Response,
    background: BackgroundTasks,
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    _key: SubmitKey,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
               description="Any printable ASCII; repeats return the first job"),
    ] = None,
) -> JobOut:
    idem = IDEMPOTENCY_NAMESPACE + idempotency_key if idempotency_key else None

    async def earlier() -> JobOut | None:
        """The job a previous request with this Idempotency-Key created, if any."""
        if idem is None:
            return None
        found = await run_in_threadpool(_existing, session, idem)
        if found is None:
            return None
        response.status_code = 200
        response.headers["Location"] = f"/v1/jobs/{found.id}"
        return found

    # The body is validated before the idempotency lookup (a malformed repeat is still a 422),
    # and an upload is stored only after it: a repeated upload stores nothing.
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        payload = await _read_json(request)
        if (previous := await earlier()) is not None:
            return previous
        uri = payload.uri
        tasks: list[str] | None = list(payload.tasks) if payload.tasks else None
        questions, callback_url = payload.questions, payload.callback_url
    elif media == "multipart/form-data":
        limit = settings.api_max_upload_bytes
        upload, tmp = await receive_multipart(
            request.headers.get("content-type", ""), request.headers.get("content-length"),
            request.stream(), max_bytes=limit,
        )
        try:
            form = _form_fields(upload.fields)
            if (previous := await earlier()) is not None:
                return previous
            request.app.state.metrics.uploaded_bytes.inc(upload.size)
            uri = await store_upload(upload, settings.output_url)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tasks = list(form.tasks) if form.tasks else None
        questions, callback_url = form.questions, form.callback_url
    else:
        raise ApiProblem(415, "send application/json (an s3:// URI) or multipart/form-data (a file)",
                         code="unsupported_media_type")

    out, created = await run_in_threadpool(
        _submit, session, settings, uri, tasks, questions, callback_url, idem
    )
    if created:
        await dispatch(session, settings, enqueue, background, out.id)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{out.id}"
    return out


# --------------------------------------------------------------------------- one job


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress, timings and error",
            responses=responses(401, 403, 404, 422))
def get_job(session: SessionDep, _key: ReadKey, job_id: str) -> Response:
    return reply(session, job_out(load_job(session, job_id, with_audio=True)))


@router.post(
    "/{job_id}/retry",
    response_model=JobOut,
    summary="Queue a failed or cancelled job again (partial results are kept and upserted)",
    responses=responses(401, 403, 404, 409, 422, 503),
)
async def retry_job(
    session: SessionDep,
    settings: SettingsDep,
    enqueue: EnqueueDep,
    background: BackgroundTasks,
    _key: SubmitKey,
    job_id: str,
) -> JobOut:
    def reset() -> JobOut:
        job = load_job(session, job_id)
        if job.status not in ("failed", "cancelled"):
            raise ApiProblem(409, f"job is {job.status}; only failed or cancelled jobs can be retried",
                             code="not_retryable")
        service.reset_for_retry(session, job.id)
        session.commit()
        out = job_out(job)
        session.close()
        return out

    out = await run_in_threadpool(reset)
    await dispatch(session, settings, enqueue, background, out.id)
    return out


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a queued or running job (cancelling a cancelled job is a no-op)",
    responses=responses(401, 403, 404, 409, 422),
)
def cancel_job(session: SessionDep, _key: SubmitKey, job_id: str) -> Response:
    job = load_job(session, job_id)
    if job.status in ("succeeded", "failed"):
        raise ApiProblem(409, f"job already {job.status}", code="already_finished")
    service.cancel_job(session, job.id)
    session.commit()
    return reply(session, job_out(job))
