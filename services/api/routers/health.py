"""Liveness, readiness and metrics: no API key needed."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from services.api.deps import DatabaseDep, answer
from services.api.problems import ApiProblem, responses
from services.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])

_OK = b'{"status":"ok"}'
_READY = b'{"status":"ok","database":"ok"}'


@router.get("/healthz", response_model=Health, summary="The process is up")
async def healthz() -> Response:
    return answer(_OK)


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The database is reachable",
    responses=responses(503),
)
async def readyz(db: DatabaseDep) -> Response:
    try:
        async with db.reader() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise ApiProblem(503, f"database unreachable: {type(exc).__name__}", code="not_ready",
                         headers={"Retry-After": "5"}) from None
    return answer(_READY)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                     "description": "Prometheus text exposition format"}},
)
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    return answer(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
