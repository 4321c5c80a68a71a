"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from earshot.errors import EarshotError, InputError, StorageError
from earshot.tenants import IdempotencyConflict, QuotaExceeded, UnknownTenant

log = logging.getLogger("earshot.api")

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "urn:earshot:problem:"


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where the bad value is: location, then field path")
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document. ``code`` is Earshot's stable machine-readable reason."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "urn:earshot:problem:not_found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "no job 0b8e2a52-5a8e-4f38-9d1e-1f6f3f1c2b7a",
                    "instance": "/v1/jobs/0b8e2a52-5a8e-4f38-9d1e-1f6f3f1c2b7a",
                    "code": "not_found",
                }
            ]
        }
    )

    type: str = Field(default="about:blank", description="A URI naming the kind of problem")
    title: str = Field(description="Short summary of the kind of problem")
    status: int = Field(description="The HTTP status code")
    detail: str | None = Field(default=None, description="What went wrong this time")
    instance: str | None = Field(default=None, description="The request path")
    code: str | None = Field(default=None, description="Earshot's error code")
    errors: list[ValidationIssue] | None = Field(default=None, description="Validation failures")


class ApiProblem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail or HTTPStatus(status).phrase)
        self.status = status
        self.detail = detail
        self.code = code or _default_code(status)
        self.headers = headers
        self.errors = errors


def _default_code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def problem_response(
    request: Request | None,
    status: int,
    detail: str | None = None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    code = code or _default_code(status)
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(
        type=PROBLEM_BASE + code,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path if request is not None else None,
        code=code,
        errors=[ValidationIssue.model_validate(e) for e in errors] if errors is not None else None,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def _issues(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [p if isinstance(p, int) else str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    return out


def earshot_status(exc: EarshotError) -> int:
    if isinstance(exc, QuotaExceeded):
        return 429
    if isinstance(exc, IdempotencyConflict):
        return 409
    if isinstance(exc, UnknownTenant):  # a tenant that does not exist is a missing resource
        return 404
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, StorageError):
        return 404 if exc.code == "not_found" else 503 if exc.retryable else 502
    return 503 if exc.retryable else 500


def install(app: FastAPI) -> None:
    async def api_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return problem_response(
            request, exc.status, exc.detail, code=exc.code, headers=exc.headers, errors=exc.errors
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        code = "too_large" if exc.status_code == 413 else None
        return problem_response(request, exc.status_code, detail, code=code, headers=dict(exc.headers or {}))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        issues = _issues(exc.errors())
        detail = "; ".join(
            f"{'.'.join(str(p) for p in i['loc'])}: {i['msg']}" for i in issues[:5]
        ) or "invalid request"
        return problem_response(request, 422, detail, code="validation_error", errors=issues)

    async def earshot_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, EarshotError)
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, QuotaExceeded) else None
        return problem_response(request, earshot_status(exc), exc.message, code=exc.code, headers=headers)

    async def data_error(request: Request, exc: Exception) -> JSONResponse:
        # a value the database cannot hold (out of range, bad encoding): the caller's input
        log.info("database refused a value: %s", exc)
        return problem_response(request, 422, "a value is out of range", code="invalid_value")

    async def db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return problem_response(
            request, 503, "the database is unavailable", code="database_unavailable",
            headers={"Retry-After": "5"},
        )

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return problem_response(request, 500, "internal error", code="internal_error")

    app.add_exception_handler(ApiProblem, api_problem)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(EarshotError, earshot_error)
    app.add_exception_handler(DataError, data_error)
    app.add_exception_handler(OperationalError, db_down)
    app.add_exception_handler(Exception, server_error)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses (the app rewrites their media type to problem+json)."""
    descriptions = {
        400: "Bad request",
        401: "No API key, or an unknown or revoked one",
        403: "The key lacks the scope this endpoint needs",
        404: "No such resource",
        409: "The resource is in a state that does not allow this",
        413: "The upload is larger than the limit",
        415: "Unsupported Content-Type",
        422: "Invalid parameters or body",
        429: "The tenant is over a quota or its rate limit (see Retry-After)",
        502: "The object store failed",
        503: "A dependency (database, queue, object store) is unavailable",
    }
    if 401 in statuses:  # every keyed request counts against its tenant's rate limit
        statuses = tuple(sorted({*statuses, 429}))
    return {s: {"model": Problem, "description": descriptions.get(s, HTTPStatus(s).phrase)} for s in statuses}
