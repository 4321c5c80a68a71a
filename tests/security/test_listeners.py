"""Issue 14, "bind addresses": listeners bind 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from earshot.config import Settings
from services.ingest.runner import run_bridge


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening_address(port: int) -> str | None:
    """The local address a TCP listener on ``port`` is bound to, read from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        hex_ip, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            return socket.inet_ntoa(bytes.fromhex(hex_ip)[::-1])
    return None


def _wait_listening(port: int) -> str | None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if (found := _listening_address(port)) is not None:
            return found
        time.sleep(0.05)
    return None


def test_ingest_metrics_and_webhook_listen_on_loopback_by_default(pg_url: str) -> None:
    settings = Settings(_env_file=None, database_url=pg_url, ingest_webhook_secret="x" * 20,  # type: ignore[call-arg]
                        ingest_buckets=["uploads"])
    webhook, metrics = _free_port(), _free_port()
    stop = threading.Event()
    enqueued: list[Any] = []
    thread = threading.Thread(
        target=run_bridge, args=(f"webhook://:{webhook}", settings),
        kwargs={"enqueue": enqueued.append, "stop": stop, "metrics_port": metrics}, daemon=True,
    )
    thread.start()
    try:
        assert _wait_listening(webhook) == "127.0.0.1"
        assert _wait_listening(metrics) == "127.0.0.1"
    finally:
        stop.set()
        thread.join(20)


def test_api_command_binds_loopback_by_default() -> None:
    import inspect

    from services.cli import api

    assert inspect.signature(api.serve).parameters["host"].default == "127.0.0.1"


def _serve(app: Any, limits: Any) -> tuple[Any, int, threading.Thread]:
    from earshot.listeners import make_server

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = make_server(app, limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return server, int(sock.getsockname()[1]), thread


def test_upload_bodies_may_be_slow_but_not_stalled() -> None:
    """An API-style listener: no total body deadline, but each piece must come within the idle bound."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from earshot.listeners import ListenerLimits

    async def upload(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    app = Starlette(routes=[Route("/upload", upload, methods=["POST"])])
    server, port, thread = _serve(app, ListenerLimits(header_timeout_s=2, body_timeout_s=None, body_idle_timeout_s=0.6))
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:  # 2.4 s in all, 0.3 s apart: fine
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n")
            for _ in range(8):
                time.sleep(0.3)
                sock.sendall(b"x")
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", port)) as sock:  # then a stall
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\nxx")
            sock.settimeout(5)
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        server.should_exit = True
        thread.join(10)


def test_header_deadline_protocol_loads_by_import_path_for_multiprocess_uvicorn() -> None:
    import uvicorn

    from earshot.listeners import HeaderDeadlineH11Protocol

    config = uvicorn.Config(lambda *a: None, http="earshot.listeners:HeaderDeadlineH11Protocol")
    config.load()
    assert config.http_protocol_class is HeaderDeadlineH11Protocol


def test_earshot_api_is_local_by_default_and_drops_never_ending_headers(tmp_path: Path) -> None:
    """`earshot api` as shipped: 127.0.0.1, and a slowloris connection is closed (header deadline 10 s)."""
    import os
    import subprocess
    import sys

    import httpx

    root = Path(__file__).resolve().parents[2]
    port = _free_port()
    env = {**os.environ, "EARSHOT_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
           "EARSHOT_OUTPUT_URL": (tmp_path / "out").as_uri()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli.main", "api", "--port", str(port), "--log-level", "warning"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "earshot api did not start"
            time.sleep(0.3)
        assert _listening_address(port) == "127.0.0.1"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            sock.settimeout(20)
            started = time.monotonic()
            assert sock.recv(4096) == b""  # closed by the server, without an answer
            assert time.monotonic() - started < 15
    finally:
        proc.terminate()
        proc.wait(20)
