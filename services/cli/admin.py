"""`earshot db ...`, `earshot model ...` and `earshot worker`."""

from __future__ import annotations

from typing import Annotated

import typer

from earshot.config import get_settings
from earshot.db import migrate
from services.cli.common import console

db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
model_app = typer.Typer(help="AF3 checkpoints.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = "heads") -> None:
    """Apply migrations (to every head by default)."""
    migrate.upgrade(revision, url=get_settings().database_url)
    console.print(f"database upgraded to {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = "base") -> None:
    """Revert migrations (to an empty database by default)."""
    migrate.downgrade(revision, url=get_settings().database_url)
    console.print(f"database downgraded to {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the applied revision(s)."""
    migrate.current(url=get_settings().database_url)


@model_app.command("init-tiny")
def init_tiny(
    directory: str,
    with_think: Annotated[
        bool, typer.Option("--with-think/--no-think", help="Also write a tiny random think adapter (think/).")
    ] = True,
    seed: int = 0,
) -> None:
    """Write a tiny, randomly initialised AF3 checkpoint (its words are noise)."""
    from earshot.af3.tiny import build_tiny_checkpoint

    out = build_tiny_checkpoint(directory, seed=seed, with_think=with_think)
    console.print(f"tiny AF3 checkpoint written to {out}")


def default_hostname() -> str:
    """Unique per process, so two workers on one host never share a pidbox queue."""
    import os
    import socket
    import uuid

    return f"earshot-{os.getpid()}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"


def serve_metrics(port: int, *, host: str = "127.0.0.1") -> tuple[object, object]:
    """Serve this process's Prometheus metrics (e.g. earshot_generation_truncated_total).

    Prefork children count in their own memory: with PROMETHEUS_MULTIPROC_DIR set (an empty
    directory, in the environment before the worker starts) every child's counts are served.
    """
    import os

    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return start_http_server(port, addr=host, registry=registry)


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues: cpu, gpu")] = "cpu,gpu",
    concurrency: Annotated[int, typer.Option(help="Worker processes")] = 1,
    pool: Annotated[str, typer.Option(help="prefork, solo or threads")] = "prefork",
    hostname: Annotated[
        str | None,
        typer.Option(
            envvar="EARSHOT_WORKER_HOSTNAME",
            help="Celery node name (name@host); default unique per process. The chart sets the pod name.",
        ),
    ] = None,
    loglevel: str = "INFO",
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus metrics here (model answers, answers cut by their token limit)"),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics listener")] = "127.0.0.1",
) -> None:
    """Run a Celery worker (needs EARSHOT_BROKER_URL)."""
    from earshot.callbacks.outbox import require_secret
    from earshot.config import get_settings
    from earshot.errors import ConfigError
    from workers.celery_app import configure

    settings = get_settings()
    if not settings.broker_url:
        raise typer.BadParameter("EARSHOT_BROKER_URL is not set: without a broker, jobs run in-process")
    try:
        require_secret(settings)
    except ConfigError as exc:
        raise typer.BadParameter(exc.message) from exc
    app = configure(settings)
    if metrics_port is not None:
        serve_metrics(metrics_port, host=metrics_host)
    app.worker_main(
        [
            "worker", f"--queues={queues}", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--hostname={hostname or default_hostname()}", f"--loglevel={loglevel}",
        ]
    )
