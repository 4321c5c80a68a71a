"""HTTP listeners with deadlines: uvicorn plus the two timeouts it lacks.

uvicorn closes idle keep-alive connections, but it waits forever for a request's headers and
for its body, so a client that sends a byte now and then holds a connection (and whatever the
app holds for it) indefinitely. Here:

- :class:`ListenerLimits` ``header_timeout_s``: a connection that has not sent complete request
  headers this long after connecting (or after its previous response) is closed;
- ``body_timeout_s``: a request body must arrive completely within this time after the app
  first reads it, and ``body_idle_timeout_s`` bounds the wait for each piece of it; else the
  client gets ``408`` and the connection is closed (:class:`BodyTimeoutMiddleware`; large
  uploads use the idle bound with no total);
- ``max_connections`` (uvicorn's ``limit_concurrency``: ``503`` beyond it), ``keep_alive_s``
  and a 16 KiB cap on an incomplete request head.

Everything binds 127.0.0.1 unless the caller names another address.

With ``uvicorn.run(..., workers=N)`` (config passed to subprocesses by import path) use
``http="earshot.listeners:HeaderDeadlineH11Protocol"`` and add :class:`BodyTimeoutMiddleware`
to the app.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = [
    "DEFAULT_HOST",
    "BodyTimeoutMiddleware",
    "HeaderDeadlineH11Protocol",
    "ListenerLimits",
    "make_server",
]

log = logging.getLogger("earshot.listeners")

DEFAULT_HOST = "127.0.0.1"

Scope = dict[str, Any]
Message = dict[str, Any]


@dataclass(frozen=True)
class ListenerLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float | None = 30.0  # None: no total deadline (uploads)
    body_idle_timeout_s: float = 30.0
    keep_alive_s: int = 5
    max_connections: int = 256
    max_head_bytes: int = 16 * 1024


class HeaderDeadlineH11Protocol(H11Protocol):
    """h11 protocol that closes connections whose request headers do not arrive in time."""

    header_timeout_s = 10.0
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.header_timeout_s, self._expire, self.cycle)

    def _expire(self, armed_cycle: object) -> None:
        # a new cycle means a complete request head arrived since the timer was set
        if self.cycle is armed_cycle and not self.transport.is_closing():
            log.debug("closing a connection that sent no complete request head in time")
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)


class _BodyTimeout(Exception):
    pass


class BodyTimeoutMiddleware:
    """ASGI: a request body must be complete ``timeout_s`` after the app starts reading it
    (None: no total), and no piece of it may take longer than ``idle_timeout_s``."""

    def __init__(self, app: Any, *, timeout_s: float | None = 30.0, idle_timeout_s: float = 30.0) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.idle_timeout_s = idle_timeout_s

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        body_done = False
        started = False
        answered = False

        async def timed_receive() -> Message:
            nonlocal deadline, body_done, answered
            if body_done:
                message: Message = await receive()  # e.g. waiting for a disconnect while streaming
                return message
            if deadline is None and self.timeout_s is not None:
                deadline = loop.time() + self.timeout_s
            wait = self.idle_timeout_s if deadline is None else min(self.idle_timeout_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(0.001, wait))
            except TimeoutError:
                if not started:
                    answered = True
                    await _send_408(send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the client already has its 408
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracking_send)
        except Exception:
            if not answered:
                raise


async def _send_408(send: Any) -> None:
    body = b'{"error":"request body not received in time"}'
    await send({
        "type": "http.response.start",
        "status": 408,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    })
    await send({"type": "http.response.body", "body": body})


def make_server(app: Any, limits: ListenerLimits, *, log_prefix: str = "http", **config: Any) -> uvicorn.Server:
    """A uvicorn server for ``app`` with every deadline set; call ``.run(sockets=[...])``."""
    protocol = type(f"{log_prefix.title()}H11Protocol", (HeaderDeadlineH11Protocol,),
                    {"header_timeout_s": limits.header_timeout_s})
    cfg = uvicorn.Config(
        BodyTimeoutMiddleware(app, timeout_s=limits.body_timeout_s, idle_timeout_s=limits.body_idle_timeout_s),
        http=protocol,
        lifespan="off",
        log_config=None,
        server_header=False,
        access_log=False,
        timeout_keep_alive=limits.keep_alive_s,
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_head_bytes,
        **config,
    )
    return uvicorn.Server(cfg)
