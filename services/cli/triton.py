"""`earshot triton serve | health | models`: a real Triton server for development and checks."""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.table import Table

from earshot.config import get_settings
from earshot.errors import EarshotError
from earshot.triton import protocol as p
from services.cli.common import console, err_console

app = typer.Typer(help="Triton Inference Server: run it locally, check it.", no_args_is_help=True)


@app.command()
def serve(
    cpu: Annotated[bool, typer.Option("--cpu", help="Run every model on CPU (no GPU needed).")] = False,
    model_path: Annotated[
        str | None, typer.Option(help="AF3 weights: local dir or s3:// prefix (default: EARSHOT_MODEL_PATH)")
    ] = None,
    address: Annotated[
        str,
        typer.Option(help="Bind address of the HTTP, gRPC and metrics listeners (0.0.0.0: every interface)"),
    ] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (EARSHOT_TRITON_URL points here)")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port")] = 8002,
    model_repository: Annotated[
        Path | None, typer.Option(help="Model repository to serve (default: the project's model_repo/)")
    ] = None,
    log_verbose: Annotated[int, typer.Option(help="tritonserver --log-verbose level")] = 0,
) -> None:
    """Start tritonserver from the nvidia-pytriton wheel in the foreground (Ctrl-C stops it)."""
    from earshot.triton.repository import default_repository, prepare_repository
    from earshot.triton.server import TritonServer

    settings = get_settings()
    try:
        source = model_repository or default_repository()
    except EarshotError as exc:
        err_console.print(f"[red]{exc.message}")
        raise typer.Exit(code=2) from exc
    weights = model_path or settings.model_path
    with tempfile.TemporaryDirectory(prefix="earshot-triton-") as tmp:
        # Always a generated copy: the weights location becomes explicit and absolute, and
        # --cpu rewrites instance kinds without touching the shipped GPU configs.
        repo = prepare_repository(source, Path(tmp) / "model_repo", cpu=cpu, model_path=weights)
        server = TritonServer(
            repo,
            host=address,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            extra_args=[f"--log-verbose={log_verbose}"] if log_verbose else [],
        )

        def stop(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        # SIGINT explicitly too: a process started from a background shell inherits SIGINT as
        # ignored, and Python then installs no KeyboardInterrupt handler, so Ctrl-C (or a
        # supervisor's SIGINT) would leave the server running.
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            err_console.print(f"starting tritonserver ({'CPU' if cpu else 'GPU'}) with weights {weights}")
            server.start(wait=True, foreground=True)
            err_console.print(
                f"[green]ready[/]  listening on {address}: gRPC :{grpc_port}  HTTP :{http_port}  "
                f"metrics :{metrics_port}/metrics"
            )
            assert server.process is not None
            code = server.process.wait()
        except KeyboardInterrupt:
            code = server.stop() or 0
        except EarshotError as exc:
            server.stop()
            err_console.print(f"[red]{exc.message}")
            raise typer.Exit(code=1) from exc
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            server.stop()
    raise typer.Exit(code=code)


def _client(url: str | None) -> Any:
    import tritonclient.grpc as grpcclient

    return grpcclient.InferenceServerClient(url or get_settings().triton_url)


@app.command()
def health(
    url: Annotated[str | None, typer.Option(help="host:gRPC port (default: EARSHOT_TRITON_URL)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Is the server live and ready, and is each Earshot model ready? Exit 1 if not."""
    from tritonclient.utils import InferenceServerException

    target = url or get_settings().triton_url
    report: dict[str, Any] = {"url": target, "live": False, "ready": False, "models": {}}
    try:
        client = _client(target)
        report["live"] = bool(client.is_server_live(client_timeout=5))
        report["ready"] = bool(client.is_server_ready(client_timeout=5))
        for name in p.ALL_MODELS:
            report["models"][name] = bool(client.is_model_ready(name, client_timeout=5))
    except InferenceServerException as exc:
        report["error"] = exc.message() or str(exc)
    ok = report["ready"] and all(report["models"].values()) and bool(report["models"])
    if as_json:
        print(json.dumps(report))
    else:
        colour = "green" if ok else "red"
        console.print(f"Triton at {target}: live={report['live']} ready=[{colour}]{report['ready']}[/]")
        for name, ready in report["models"].items():
            console.print(f"  {name:16s} {'[green]ready' if ready else '[red]not ready'}")
        if "error" in report:
            console.print(f"[red]{report['error']}")
    if not ok:
        raise typer.Exit(code=1)


@app.command()
def models(
    url: Annotated[str | None, typer.Option(help="host:gRPC port (default: EARSHOT_TRITON_URL)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The server's model repository: each model, version and state."""
    from tritonclient.utils import InferenceServerException

    try:
        index = _client(url).get_model_repository_index(as_json=True, client_timeout=10)
    except InferenceServerException as exc:
        err_console.print(f"[red]cannot reach Triton at {url or get_settings().triton_url}: {exc.message()}")
        raise typer.Exit(code=1) from exc
    rows = [
        {"name": m.get("name", ""), "version": m.get("version", ""), "state": m.get("state", ""),
         "reason": m.get("reason", "")}
        for m in index.get("models", [])
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("model", "version", "state", "reason")
    for row in rows:
        table.add_row(row["name"], row["version"], row["state"], row["reason"])
    console.print(table)
