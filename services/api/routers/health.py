"""Liveness, readiness and metrics: no API key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from earshot.db.session import session_factory
from services.api.problems import ApiProblem, responses
from services.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database is reachable",
    responses=responses(503),
)
def readyz(request: Request) -> Readiness:
    try:
        with session_factory(request.app.state.settings.database_url)() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise ApiProblem(503, f"database unreachable: {type(exc).__name__}", code="not_ready",
                         headers={"Retry-After": "5"}) from None
    return Readiness(status="ok", database="ok")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}},
)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
