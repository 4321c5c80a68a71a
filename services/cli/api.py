"""`earshot api`: serve the REST API with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from earshot.config import get_settings
from services.cli.common import ensure_embedded_db

WORKER_START_TIMEOUT_S = 120


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request")] = True,
) -> None:
    """Serve the REST API (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    from services.api.metrics import prepare_multiprocess

    ensure_embedded_db(get_settings())
    prepare_multiprocess(workers)  # several workers: /metrics adds up all of them
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # a worker imports the whole app before it answers the supervisor's health check; on a
        # busy node that takes longer than uvicorn's 5 s default, and the workers were killed
        # and restarted for ever
        timeout_worker_healthcheck=WORKER_START_TIMEOUT_S,
        log_level=log_level,
        access_log=access_log,
        proxy_headers=True,
        # uvicorn waits for request headers for ever: this protocol closes a connection whose
        # request head is not complete within 10 s (slowloris; earshot/listeners.py)
        http="earshot.listeners:HeaderDeadlineH11Protocol",
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=16 * 1024,
    )
