"""The ingest bridge process: `earshot ingest run --source URL`.

Pull sources (SQS, AMQP): receive a batch, let the bridge handle each message (a small
thread pool), ack the accepted ones, release the rest, repeat. SIGTERM/SIGINT stop after
the batch in hand. The webhook source serves HTTP until stopped.

``EARSHOT_INGEST_FAULT=exit-before-ack`` (tests only) makes the process die with exit code
137 right after the first batch that created jobs, before acking it -- what a SIGKILL at
the worst moment looks like.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import kombu
import kombu.pools
from prometheus_client import Gauge

from earshot.config import Settings
from earshot.ingest.bridge import Bridge, Outcome
from earshot.ingest.sources import Received, Source, open_source
from earshot.ingest.submit import Enqueue
from earshot.ingest.webhook import WebhookServer, parse_webhook_url

__all__ = ["broker_probe", "celery_enqueue", "run_bridge"]

log = logging.getLogger("earshot.ingest")
PAUSED = Gauge("earshot_ingest_paused", "1 while the bridge waits for the database or the broker")


def celery_enqueue(settings: Settings) -> Enqueue:
    """``process_job`` published on a connection to *this* settings' broker.

    Connections come from kombu's pool for the broker URL (a bridge's threads share it), so
    reconfiguring the process for another broker needs no reset of Celery's own pool. On
    AMQP, with publisher confirms: "sent" means "stored".
    """
    from workers.celery_app import app, configure
    from workers.tasks import enqueue, process_job

    configure(settings)
    if not settings.broker_url:
        return lambda job_id: enqueue(job_id)  # eager mode: runs in this process
    options = dict(app.conf.broker_transport_options or {})
    if settings.broker_url.startswith(("amqp", "pyamqp")):
        options.setdefault("confirm_publish", True)
    pool = kombu.pools.connections[
        kombu.Connection(settings.broker_url, transport_options=options)
    ]

    def send(job_id: str) -> None:
        with pool.acquire(block=True, timeout=30) as conn:
            process_job.apply_async((job_id,), connection=conn)

    return send


def broker_probe(settings: Settings) -> Callable[[], None] | None:
    """Raises while the broker cannot be reached (the bridge pauses receiving)."""
    if not settings.broker_url:
        return None
    url = settings.broker_url

    def probe() -> None:
        with kombu.Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)

    return probe


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current batch", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def run_bridge(
    source_url: str,
    settings: Settings,
    *,
    enqueue: Enqueue | None = None,
    threads: int = 4,
    stop: threading.Event | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    on_batch: Callable[[list[Outcome]], None] | None = None,
    poll_s: float = 10.0,
) -> None:
    """Run until ``stop`` is set (or a signal arrives); ``poll_s`` bounds one receive."""
    stop = stop or threading.Event()
    _install_signals(stop)
    bridge = Bridge(
        settings, enqueue=enqueue or celery_enqueue(settings), probe_broker=broker_probe(settings)
    )
    if metrics_port:
        from prometheus_client import start_http_server

        # its own listener, local unless told: the webhook port may face the internet
        start_http_server(metrics_port, addr=metrics_host)
    if source_url.startswith("webhook://"):
        _serve_webhook(source_url, bridge, settings, stop)
        return
    source = open_source(source_url, settings)
    log.info("ingest bridge reading %s", source.name)
    fault = os.environ.get("EARSHOT_INGEST_FAULT", "")
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="ingest") as pool:
            while not stop.is_set():
                outage = _one_batch(source, bridge, pool, fault, on_batch, poll_s)
                if outage:
                    _pause(bridge, outage, stop)
    finally:
        source.close()
        log.info("ingest bridge stopped")


def _pause(bridge: Bridge, outage: str, stop: threading.Event) -> None:
    """Receive nothing while the downstream is down: every receive would burn a receive
    count (SQS) or a requeue (AMQP) on a message that cannot succeed yet."""
    started = time.monotonic()
    delay = 1.0
    log.warning("ingest paused: %s", outage)
    PAUSED.set(1)
    try:
        while not stop.wait(delay):
            if bridge.ready() is None:
                log.warning("ingest resumed after %.0f s (%s)", time.monotonic() - started, outage)
                return
            delay = min(30.0, delay * 2)
    finally:
        PAUSED.set(0)


def _one_batch(
    source: Source,
    bridge: Bridge,
    pool: ThreadPoolExecutor,
    fault: str,
    on_batch: Callable[[list[Outcome]], None] | None,
    poll_s: float,
) -> str | None:
    """One receive-handle-ack round; the outage that stopped it, if any."""
    try:
        items = source.receive(max_wait_s=poll_s)
    except Exception as exc:  # the queue is unreachable: wait and try again
        log.warning("cannot receive from %s: %s", source.name, exc)
        threading.Event().wait(5)
        return None
    if not items:
        return None
    outcomes = list(pool.map(lambda item: bridge.handle(item.delivery), items))
    if fault == "exit-before-ack" and any(o.jobs for o in outcomes):
        log.error("EARSHOT_INGEST_FAULT=exit-before-ack: dying before the ack")
        os._exit(137)
    done: list[Received] = []
    again: list[Received] = []
    for item, outcome in zip(items, outcomes, strict=True):
        (done if outcome.action == "ack" else again).append(item)
    try:
        if done:
            source.ack(done)
        if again:
            source.release(again)
    except Exception as exc:  # not acked: the messages come back, and handling them is idempotent
        log.warning("cannot ack/release %d message(s) on %s: %s", len(done) + len(again), source.name, exc)
    if on_batch is not None:
        on_batch(outcomes)
    return next((o.outage for o in outcomes if o.outage), None)


def _serve_webhook(url: str, bridge: Bridge, settings: Settings, stop: threading.Event) -> None:
    host, port = parse_webhook_url(url)
    server = WebhookServer(host, port, bridge, settings)
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    log.info("ingest webhook listening on http://%s:%d", host, server.port)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        log.info("ingest webhook stopped")
