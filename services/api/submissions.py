"""``POST /v1/jobs``: read a JSON or multipart submission, honour its Idempotency-Key, create the job.

Order matters and is part of the contract:

1. the body is validated first (a malformed repeat is still a 422);
2. then the Idempotency-Key is looked up: a repeat returns the first job and stores nothing
   (an upload is stored only after this step);
   (no connection is held while the body streams in);
3. then the job is created by ``earshot.jobs.submit`` in one thread hop that opens and closes
   its own session (the S3 HEAD of the source blocks, so it must not run on the event loop).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import Row
from sqlalchemy.orm import Session

from earshot.config import Settings
from earshot.jobs.submit import submit
from earshot.results import fetch_job, fetch_job_by_idempotency_key
from services.api.db import Database
from services.api.deps import in_thread
from services.api.principals import Principal
from services.api.problems import ApiProblem
from services.api.schemas import CALLBACK_URL, MAX_QUESTIONS, MAX_TASKS, QUESTION, JobCreate, TaskName
from services.api.upload import receive_multipart, store_upload

IDEMPOTENCY_NAMESPACE = "api:"


@dataclass(frozen=True)
class Submitted:
    job: Row[Any]
    created: bool


class _FormFields(BaseModel):
    tasks: list[TaskName] | None = Field(default=None, max_length=MAX_TASKS)
    questions: list[QUESTION] = Field(default_factory=list, max_length=MAX_QUESTIONS)
    callback_url: str | None = Field(default=None, max_length=2000, pattern=CALLBACK_URL)


def _body_errors(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(
        [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors(include_url=False, include_input=False)]
    )


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


async def _read_json(request: Request) -> JobCreate:
    # the body limit middleware (limits.py) caps what request.body() may read
    try:
        return JobCreate.model_validate_json(await request.body())
    except ValidationError as exc:
        raise _body_errors(exc) from None


def _create(
    session: Session, settings: Settings, uri: str, tasks: list[str] | None, questions: list[str],
    callback_url: str | None, idempotency_key: str | None,
) -> tuple[str, bool]:
    job, created = submit(
        session,
        uri,
        tasks=tasks or list(settings.default_tasks),
        engine=settings.engine,
        questions=questions,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
    )
    return job.id, created


async def submit_request(
    request: Request,
    db: Database,
    settings: Settings,
    principal: Principal,
    idempotency_key: str | None,
) -> Submitted:
    idem = IDEMPOTENCY_NAMESPACE + idempotency_key if idempotency_key else None

    async def earlier() -> Row[Any] | None:
        if idem is None:
            return None
        async with db.reader() as conn:
            return await fetch_job_by_idempotency_key(conn, idem, tenant_id=principal.tenant_id)

    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        payload = await _read_json(request)
        if (previous := await earlier()) is not None:
            return Submitted(previous, False)
        uri = payload.uri
        tasks: list[str] | None = list(payload.tasks) if payload.tasks else None
        questions, callback_url = payload.questions, payload.callback_url
    elif media == "multipart/form-data":
        upload, tmp = await receive_multipart(
            content_type, request.headers.get("content-length"), request.stream(),
            max_bytes=settings.api_max_upload_bytes,
        )
        try:
            form = _form_fields(upload.fields)
            if (previous := await earlier()) is not None:
                return Submitted(previous, False)
            request.app.state.metrics.uploaded_bytes.inc(upload.size)
            uri = await store_upload(upload, settings.output_url)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        tasks = list(form.tasks) if form.tasks else None
        questions, callback_url = form.questions, form.callback_url
    else:
        raise ApiProblem(415, "send application/json (an s3:// URI) or multipart/form-data (a file)",
                         code="unsupported_media_type")

    job_id, created = await in_thread(
        settings, lambda s: _create(s, settings, uri, tasks, questions, callback_url, idem)
    )
    async with db.reader() as conn:
        row = await fetch_job(conn, job_id)
    assert row is not None
    return Submitted(row, created)
