"""FastAPI dependencies: settings, a database session per request, API-key auth, the queue."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.orm import Session, joinedload

from earshot.auth import ApiKey, authenticate, scope_allows
from earshot.config import Settings
from earshot.db.models import Job
from earshot.db.session import session_factory
from services.api.problems import ApiProblem

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    bearerFormat="ek_...",
    description="An Earshot API key: `Authorization: Bearer ek_...` (create one with `earshot keys create`)",
)


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes that write commit themselves, anything else rolls back."""
    session = session_factory(request.app.state.settings.database_url)()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]

Enqueuer = Callable[[str], Any]


def default_enqueue(job_id: str) -> Any:
    """The production path: hand the job to Celery (in-process when no broker is configured)."""
    from workers.tasks import enqueue

    return enqueue(job_id)


def get_enqueuer() -> Enqueuer:
    """Overridable (``app.dependency_overrides[get_enqueuer]``) so tests need no model run."""
    return default_enqueue


EnqueueDep = Annotated[Enqueuer, Depends(get_enqueuer)]


def require_scope(scope: str) -> Callable[..., ApiKey]:
    def check(
        session: SessionDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiKey:
        challenge = {"WWW-Authenticate": 'Bearer realm="earshot"'}
        if credentials is None:
            raise ApiProblem(401, "an API key is required (Authorization: Bearer ek_...)",
                             code="unauthenticated", headers=challenge)
        try:
            key = authenticate(session, credentials.credentials)
        finally:
            # Hand the connection back before the route runs in another thread hop (see reply).
            session.close()
        if key is None:
            raise ApiProblem(401, "unknown or revoked API key", code="invalid_key",
                             headers={"WWW-Authenticate": 'Bearer realm="earshot", error="invalid_token"'})
        if not scope_allows(key.scopes, scope):
            raise ApiProblem(403, f"this key lacks the {scope!r} scope", code="insufficient_scope")
        return key

    check.__name__ = f"require_{scope}"
    return check


ReadKey = Annotated[ApiKey, Depends(require_scope("read"))]
SubmitKey = Annotated[ApiKey, Depends(require_scope("submit"))]
AdminKey = Annotated[ApiKey, Depends(require_scope("admin"))]


def reply(
    session: Session,
    body: BaseModel | str | bytes,
    *,
    status_code: int = 200,
    media_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Response:
    """End a sync route: give the connection back, then answer with a ready response.

    Returning a Response (not a model) skips FastAPI's second validation of the model, and for
    sync routes that validation runs in another thread hop. A request holding a pooled
    connection while it waits for a thread, with every thread waiting for a connection, is a
    deadlock (it happened at 64 concurrent requests); so no connection outlives the route.
    """
    session.close()
    content = body.model_dump_json() if isinstance(body, BaseModel) else body
    return Response(content, status_code=status_code, media_type=media_type, headers=headers)


def load_job(session: Session, job_id: str, *, with_audio: bool = False) -> Job:
    """The job or a 404 problem; ids that are not UUIDs cannot exist and skip the database.

    ``with_audio`` loads the audio file row in the same query (for the job payload).
    """
    try:
        canonical = str(uuid.UUID(job_id))
    except ValueError:
        raise ApiProblem(404, f"no job {job_id[:64]!r}", code="not_found") from None
    job = session.get(Job, canonical, options=[joinedload(Job.audio_file)] if with_audio else None)
    if job is None:
        raise ApiProblem(404, f"no job {job_id}", code="not_found")
    return job
