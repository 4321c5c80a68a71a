"""``POST /v1/jobs``: read a JSON or multipart submission, honour its Idempotency-Key, create the job.

Order matters and is part of the contract:

1. the body is validated first (a malformed repeat is still a 422);
2. then the Idempotency-Key is looked up within the caller's tenant: a repeat of the same
   request returns the first job and stores nothing (an upload is stored only after this step),
   the same key with another body is a 409 (``earshot.tenants.find_idempotent``);
   (no connection is held while the body streams in);
3. then the source is checked against the tenant's allow-list (uploads the API stored itself
   need none), the tenant's quotas are checked (429), and
4. the job is created by ``earshot.jobs.submit`` in one thread hop that opens and closes
   its own session (the S3 HEAD of the source blocks, so it must not run on the event loop).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session

from earshot.config import Settings
from earshot.errors import InputError
from earshot.jobs.submit import submit
from earshot.results import AnyRow, fetch_job
from earshot.tenants import check_quota, check_source, find_idempotent, fingerprint, source_unavailable
from services.api.db import Database, run_sync
from services.api.deps import in_thread
from services.api.principals import Principal
from services.api.problems import ApiProblem
from services.api.schemas import CALLBACK_URL, MAX_QUESTIONS, MAX_TASKS, QUESTION, JobCreate, TaskName
from services.api.upload import receive_multipart, store_upload

IDEMPOTENCY_NAMESPACE = "api:"


@dataclass(frozen=True)
class Submitted:
    job: AnyRow
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


def _idempotent_job(session: Session, tenant_id: str, key: str, request_fingerprint: str) -> str | None:
    job = find_idempotent(session, tenant_id, key, request_fingerprint)  # 409 on another body
    return job.id if job is not None else None


def _create(
    session: Session,
    settings: Settings,
    tenant_id: str,
    uri: str,
    *,
    caller_source: bool,
    tasks: list[str] | None,
    questions: list[str],
    callback_url: str | None,
    idempotency_key: str | None,
    request_fingerprint: str,
) -> tuple[str, bool]:
    if caller_source:
        # the tenant's allow-list; a denied object answers exactly like a missing one
        uri = check_source(session, tenant_id, uri)
    check_quota(session, tenant_id)
    try:
        job, created = submit(
            session,
            uri,
            settings=settings,
            tasks=tasks or list(settings.default_tasks),
            engine=settings.engine,
            questions=questions,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )
    except InputError as exc:
        if exc.code == "source_not_found":  # the storage error text would tell missing from forbidden
            raise source_unavailable(uri) from None
        raise
    if created:
        job.tenant_id = tenant_id
        job.request_fingerprint = request_fingerprint
    return job.id, created


async def submit_request(
    request: Request,
    db: Database,
    settings: Settings,
    principal: Principal,
    idempotency_key: str | None,
) -> Submitted:
    tenant = principal.tenant_id
    # the tenant is in the stored key too, so a key string never matches another tenant's job
    idem = f"{IDEMPOTENCY_NAMESPACE}{tenant}:{idempotency_key}" if idempotency_key else None

    async def earlier(request_fingerprint: str) -> AnyRow | None:
        if idem is None:
            return None
        async with db.reader() as conn:
            job_id = await run_sync(conn, lambda s: _idempotent_job(s, tenant, idem, request_fingerprint))
            return await fetch_job(conn, job_id) if job_id is not None else None

    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json":
        payload = await _read_json(request)
        uri = payload.uri
        tasks: list[str] | None = list(payload.tasks) if payload.tasks else None
        questions, callback_url = payload.questions, payload.callback_url
        fp = fingerprint({"uri": uri, "tasks": tasks, "questions": questions, "callback_url": callback_url})
        if (previous := await earlier(fp)) is not None:
            return Submitted(previous, False)
        caller_source = True
    elif media == "multipart/form-data":
        upload, tmp = await receive_multipart(
            content_type, request.headers.get("content-length"), request.stream(),
            max_bytes=settings.api_max_upload_bytes,
        )
        try:
            form = _form_fields(upload.fields)
            tasks = list(form.tasks) if form.tasks else None
            questions, callback_url = form.questions, form.callback_url
            fp = fingerprint({"file_sha256": upload.sha256, "filename": upload.filename, "tasks": tasks,
                              "questions": questions, "callback_url": callback_url})
            if (previous := await earlier(fp)) is not None:
                return Submitted(previous, False)
            request.app.state.metrics.uploaded_bytes.inc(upload.size)
            uri = await store_upload(upload, settings, tenant)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        caller_source = False  # the API stored it, under this tenant's prefix
    else:
        raise ApiProblem(415, "send application/json (an s3:// URI) or multipart/form-data (a file)",
                         code="unsupported_media_type")

    job_id, created = await in_thread(settings, lambda s: _create(
        s, settings, tenant, uri, caller_source=caller_source, tasks=tasks, questions=questions,
        callback_url=callback_url, idempotency_key=idem, request_fingerprint=fp,
    ))
    async with db.reader() as conn:
        row = await fetch_job(conn, job_id)
    assert row is not None
    return Submitted(row, created)
