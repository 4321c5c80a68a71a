"""Issue 14, "bind addresses": listeners bind 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

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


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
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
