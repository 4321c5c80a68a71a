"""The dependencies every router uses, and the one way routes answer.

- ``SettingsDep``: the app's Settings.
- ``DatabaseDep``: the app's ``Database``. Routes read in ``async with db.reader() as conn``
  (AUTOCOMMIT; see ``db.py``) and write in ``async with db.transaction() as tx``, holding the
  connection only around their queries. Not a yield dependency: FastAPI's exit stack and
  shielded teardown for one cost a job lookup more than its query (bench/api.py).
- ``ReadKey`` / ``SubmitKey`` / ``AdminKey``: the caller (a ``Principal``), checked for the scope.
- ``EnqueueDep``: how jobs reach the queue (tests override ``get_enqueuer``).
- ``answer(body)``: a ready Response; bodies are serialised once (orjson or model_dump_json).
- ``in_thread(settings, fn)``: sync library code that blocks on more than the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import BackgroundTasks, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from earshot.config import Settings
from earshot.db.session import session_scope
from earshot.jobs import dispatch as jobs_dispatch
from earshot.jobs.dispatch import Enqueuer
from earshot.results import AnyRow, fetch_job
from services.api import serializers
from services.api.db import Database
from services.api.principals import KeyCache, Principal
from services.api.problems import ApiProblem

JSON = "application/json"
T = TypeVar("T")

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="ek_...",
    description="An Earshot API key: `Authorization: Bearer ek_...` (create one with `earshot keys create`)",
)


# async on purpose: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per
# request for reading an attribute
async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.db
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


def default_enqueue(job_id: str) -> Any:
    """The production path: hand the job to Celery (in-process when no broker is configured)."""
    from workers.tasks import enqueue

    return enqueue(job_id)


async def get_enqueuer() -> Enqueuer:
    """Overridable (``app.dependency_overrides[get_enqueuer]``) so tests need no model run."""
    return default_enqueue


EnqueueDep = Annotated[Enqueuer, Depends(get_enqueuer)]

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="earshot"'}
_INVALID = {"WWW-Authenticate": 'Bearer realm="earshot", error="invalid_token"'}


def require_scope(scope: str) -> Callable[..., Any]:
    async def check(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        if credentials is None:
            raise ApiProblem(401, "an API key is required (Authorization: Bearer ek_...)",
                             code="unauthenticated", headers=_CHALLENGE)
        cache: KeyCache = request.app.state.key_cache
        principal = await cache.lookup(request.app.state.db, credentials.credentials)
        if principal is None:
            raise ApiProblem(401, "unknown or revoked API key", code="invalid_key", headers=_INVALID)
        if not principal.allows(scope):
            raise ApiProblem(403, f"this key lacks the {scope!r} scope", code="insufficient_scope")
        # per tenant, in this process (RateLimited: 429 with Retry-After, see problems.py)
        request.app.state.rate_limiter.check(principal.tenant_id, principal.requests_per_minute)
        request.state.principal = principal
        return principal

    check.__name__ = f"require_{scope}"
    return check


ReadKey = Annotated[Principal, Depends(require_scope("read"))]
SubmitKey = Annotated[Principal, Depends(require_scope("submit"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]


def answer(
    body: Any,
    *,
    status_code: int = 200,
    media_type: str = JSON,
    headers: dict[str, str] | None = None,
) -> Response:
    """Every route ends here: ``body`` is ready data (dict/list/model, serialised once) or text/bytes.

    Returning a Response also skips FastAPI's second validation of the documented model.
    """
    content = body if isinstance(body, bytes | str) else serializers.dumps(body)
    return Response(content, status_code=status_code, media_type=media_type, headers=headers)


async def in_thread(settings: Settings, fn: Callable[[Session], T]) -> T:
    """Sync library code that also waits on storage or the model, in one thread hop.

    The session is opened, committed and closed inside that hop, so no pooled connection is
    ever held by a request that waits for a thread (the deadlock of the old sync routes).
    Pure database work uses ``db.run_sync`` instead: no thread at all.
    """

    def call() -> T:
        with session_scope(settings.database_url) as session:
            return fn(session)

    return await run_in_threadpool(call)


async def dispatch(job_id: str, *, settings: Settings, enqueue: Enqueuer, background: BackgroundTasks) -> None:
    """Queue a created job (``earshot.jobs.dispatch``); a queue outage answers 503."""
    if settings.broker_url is None:
        background.add_task(jobs_dispatch.run_in_process, job_id, settings=settings, enqueue=enqueue)
        return
    try:
        await run_in_threadpool(jobs_dispatch.enqueue_or_fail, job_id, settings=settings, enqueue=enqueue)
    except jobs_dispatch.QueueUnavailable as exc:
        raise ApiProblem(503, exc.message, code="queue_unavailable", headers={"Retry-After": "10"}) from None


def tenant_scope(principal: Principal) -> str | None:
    """The tenant a query is limited to; None for admin keys (they act across tenants).

    The rule of ``earshot.tenants.tenant_scope``, for the cached ``Principal``.
    """
    return None if principal.admin else principal.tenant_id


def not_found(job_id: str) -> ApiProblem:
    # another tenant's job answers exactly like a missing one
    return ApiProblem(404, f"no job {job_id[:64]}", code="not_found")


def canonical_id(job_id: str) -> str:
    """Ids that are not UUIDs cannot exist: 404 without a query."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        raise not_found(job_id) from None


async def load_job(conn: AsyncConnection, principal: Principal, job_id: str) -> AnyRow:
    """The job (``results.JOB_COLUMNS``) if this caller may see it, else a 404 problem."""
    row = await fetch_job(conn, canonical_id(job_id), tenant_id=tenant_scope(principal))
    if row is None:
        raise not_found(job_id)
    return row
