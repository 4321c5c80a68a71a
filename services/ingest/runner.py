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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

from earshot.config import Settings
from earshot.ingest.bridge import Bridge, Outcome
from earshot.ingest.sources import Received, Source, open_source
from earshot.ingest.submit import Enqueue
from earshot.ingest.webhook import WebhookServer, parse_webhook_url

__all__ = ["celery_enqueue", "run_bridge"]

log = logging.getLogger("earshot.ingest")


def celery_enqueue(settings: Settings) -> Enqueue:
    """``process_job.delay``; on AMQP with publisher confirms, so "sent" means "stored"."""
    from workers.celery_app import app, configure

    configure(settings)
    # a broker changed since the app first published (tests, reconfiguration): new pools
    if app._pool is not None:
        # (kombu's registry keeps one pool per broker URL: dropping our handle is enough)
        app._pool = None
        app.amqp._producer_pool = None
    if settings.broker_url and settings.broker_url.startswith(("amqp", "pyamqp")):
        options = dict(app.conf.broker_transport_options or {})
        options.setdefault("confirm_publish", True)
        app.conf.broker_transport_options = options
    from workers.tasks import enqueue

    def send(job_id: str) -> None:
        enqueue(job_id)

    return send


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
    on_batch: Callable[[list[Outcome]], None] | None = None,
    poll_s: float = 10.0,
) -> None:
    """Run until ``stop`` is set (or a signal arrives); ``poll_s`` bounds one receive."""
    stop = stop or threading.Event()
    _install_signals(stop)
    bridge = Bridge(settings, enqueue=enqueue or celery_enqueue(settings))
    if source_url.startswith("webhook://"):
        _serve_webhook(source_url, bridge, settings, stop)
        return
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    source = open_source(source_url, settings)
    log.info("ingest bridge reading %s", source.name)
    fault = os.environ.get("EARSHOT_INGEST_FAULT", "")
    try:
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="ingest") as pool:
            while not stop.is_set():
                _one_batch(source, bridge, pool, fault, on_batch, poll_s)
    finally:
        source.close()
        log.info("ingest bridge stopped")


def _one_batch(
    source: Source,
    bridge: Bridge,
    pool: ThreadPoolExecutor,
    fault: str,
    on_batch: Callable[[list[Outcome]], None] | None,
    poll_s: float,
) -> None:
    try:
        items = source.receive(max_wait_s=poll_s)
    except Exception as exc:  # the queue is unreachable: wait and try again
        log.warning("cannot receive from %s: %s", source.name, exc)
        threading.Event().wait(5)
        return
    if not items:
        return
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
