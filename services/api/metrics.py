"""Prometheus metrics: requests and latency by route template, method and status.

One process (``earshot api``): a registry per app, with process metrics. Several worker
processes (``earshot api --workers N``): prometheus-client's multiprocess mode. The CLI points
``PROMETHEUS_MULTIPROC_DIR`` at an empty directory before the workers start; every worker
writes its samples there and ``/metrics``, whichever worker answers, adds them all up
(counters and histograms summed, the in-progress gauge summed over live workers).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def prepare_multiprocess(workers: int) -> str | None:
    """Before the workers start: the directory they share, emptied (None: one process).

    ``PROMETHEUS_MULTIPROC_DIR`` is prometheus-client's own switch, read when each worker
    imports it, so it has to be in the environment the workers inherit. A directory given
    by the deployment (the chart mounts an emptyDir) is used as is, after removing the samples
    of an earlier run; otherwise several workers get a fresh temporary directory.
    """
    given = multiprocess_dir()
    if given:
        Path(given).mkdir(parents=True, exist_ok=True)
        for stale in Path(given).glob("*.db"):
            stale.unlink()
        return given
    if workers <= 1:
        return None
    created = tempfile.mkdtemp(prefix="earshot-metrics-")
    os.environ[MULTIPROC_ENV] = created
    return created


class ApiMetrics:
    """One registry per app, so several apps (tests) never collide on metric names."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # what the metric objects write to; in multiprocess mode they write files instead
        own = CollectorRegistry()
        if self.multiprocess:
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry)
        else:
            self.registry = own
            ProcessCollector(registry=own)
            PlatformCollector(registry=own)
        self.requests = Counter(
            "earshot_api_requests_total",
            "HTTP requests served",
            ["method", "route", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "earshot_api_request_duration_seconds",
            "Time to the end of the response",
            ["method", "route"],
            buckets=BUCKETS,
            registry=own,
        )
        self.in_progress = Gauge(
            "earshot_api_requests_in_progress", "Requests being served", registry=own,
            multiprocess_mode="livesum",
        )
        self.uploaded_bytes = Counter(
            "earshot_api_upload_bytes_total", "Audio bytes received by uploads", registry=own
        )

    def worker_exited(self) -> None:
        """A worker's live gauges stop counting once it is gone."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): streams pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_progress.dec()
            route = scope.get("route")
            # the template (/v1/jobs/{job_id}), never the raw path: bounded label values
            label = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            if method not in METHODS:
                method = "OTHER"
            self.metrics.requests.labels(method, label, str(status)).inc()
            self.metrics.latency.labels(method, label).observe(time.perf_counter() - started)
