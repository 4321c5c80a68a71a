"""The Celery application. With no broker configured, tasks run in-process (eager mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery

from earshot.config import Settings, get_settings

QUEUES = {
    "earshot.process_job": "cpu",
    "earshot.analyze_segment": "gpu",
    "earshot.finalize_job": "cpu",
    "earshot.deliver_callback": "cpu",
}

app = Celery("earshot", include=["workers.tasks"])
# settings given by the process that runs tasks in-process (`earshot run` with its flags)
_run_with: Settings | None = None


def task_settings() -> Settings:
    """The settings tasks run with: those of an enclosing ``run_with``, else the environment's."""
    return _run_with or get_settings()


@contextmanager
def run_with(settings: Settings) -> Iterator[None]:
    """In-process (eager) tasks started inside this block use ``settings``: a CLI's flags reach
    them as a copy of the settings, not through the environment."""
    global _run_with
    previous, _run_with = _run_with, settings
    try:
        yield
    finally:
        _run_with = previous


def configure(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    eager = s.broker_url is None
    app.conf.update(
        broker_url=s.broker_url or "memory://localhost/",
        result_backend=s.result_backend,
        task_always_eager=eager,
        task_eager_propagates=True,
        task_routes={name: {"queue": q} for name, q in QUEUES.items()},
        task_default_queue="cpu",
        # a task is acked only after it ran: a killed worker's task is redelivered
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=s.result_backend is None,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


configure()
