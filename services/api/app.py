"""The FastAPI application factory: ``create_app(settings)``; ``earshot api`` serves it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from earshot import __version__ as earshot_version
from earshot.auth import models as _auth_models  # noqa: F401  (registers api_keys on the Base)
from earshot.config import Settings, get_settings
from earshot.listeners import BodyTimeoutMiddleware
from earshot.tenants import RateLimiter
from services.api import problems
from services.api.db import Database
from services.api.limits import BodyLimitMiddleware
from services.api.metrics import ApiMetrics, MetricsMiddleware
from services.api.principals import KeyCache
from services.api.routers import conversations, health, jobs, keys, results, search
from services.api.schemas import JobCreate, UploadForm

BODY_IDLE_TIMEOUT_S = 30.0

DESCRIPTION = """
Results of Earshot's audio understanding (Audio Flamingo 3): jobs, transcripts, summaries,
sound events, reasoning traces, spoken summaries, and full-text search over all of them.

**Auth.** Every `/v1` endpoint needs an API key: `Authorization: Bearer ek_...`. Keys carry
scopes: `read` (GET), `submit` (create, retry, cancel jobs), `admin` (keys; implies all).
Create one with `earshot keys create --name NAME --scope read`.

**Errors** are RFC 9457 problem documents (`application/problem+json`) with a stable `code`.
"""


def _problem_media_types(schema: dict[str, Any]) -> None:
    """Error responses are documented as application/problem+json, the media type they use."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for status, resp in operation.get("responses", {}).items():
                content = resp.get("content")
                if status.isdigit() and int(status) >= 400 and content and "application/json" in content:
                    resp["content"] = {problems.PROBLEM_MEDIA_TYPE: content.pop("application/json")}


def _add_models(schema: dict[str, Any], *models: type[Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        sub = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(sub.pop("$defs", {}))
        components[model.__name__] = sub


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # What is imported and built by now lives as long as the process (about 150k objects).
        # A full collection scanned them all, 80 ms with every in-flight request stalled: most
        # of the API's p99 (bench/api.py). Frozen, collections only look at what requests make.
        gc.collect()
        gc.freeze()
        yield
        await app.state.db.dispose()
        app.state.metrics.worker_exited()

    app = FastAPI(
        lifespan=lifespan,
        title="Earshot",
        version=earshot_version,
        description=DESCRIPTION,
        openapi_tags=[
            {"name": "jobs", "description": "Submit and follow jobs"},
            {"name": "results", "description": "What a job found"},
            {"name": "search", "description": "Full-text search"},
            {"name": "conversations", "description": "Questions and multi-turn chat over processed audio"},
            {"name": "keys", "description": "API keys (admin)"},
            {"name": "health", "description": "Probes and metrics (no key)"},
        ],
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics()
    app.state.db = Database(settings)
    app.state.key_cache = KeyCache(settings.api_key_cache_s)
    app.state.rate_limiter = RateLimiter()
    problems.install(app)
    for module in (health, jobs, results, search, conversations, keys):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_json_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    # a stalled request body gets 408 and its connection closes; uploads have no total deadline
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=None, idle_timeout_s=BODY_IDLE_TIMEOUT_S)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            _add_models(schema, JobCreate, UploadForm)
            _problem_media_types(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
