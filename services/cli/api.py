"""`earshot api`: serve the REST API with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from earshot.config import get_settings
from services.cli.common import ensure_embedded_db


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request")] = True,
) -> None:
    """Serve the REST API (OpenAPI at /docs and /openapi.json)."""
    import uvicorn

    ensure_embedded_db(get_settings())
    uvicorn.run(
        "services.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        proxy_headers=True,
    )
