"""Celery tasks: thin wrappers that call earshot.pipeline and fan out / fan in.

Fan-in is a database latch rather than a chord: every analyze_segment checks whether all
segments are done and enqueues finalize_job, which is idempotent. A chord's counter in the
result backend would double-count a segment redelivered after a worker died (acks_late).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task

from earshot import pipeline
from earshot.config import get_settings
from earshot.db.session import session_scope
from earshot.engines import get_engine
from earshot.errors import EarshotError
from earshot.jobs.service import fail_job
from workers.celery_app import app

log = logging.getLogger("earshot.tasks")
T = TypeVar("T")


def _guarded(task: Task, job_id: str, step: Callable[[], T]) -> T | None:
    """Run a step; bad input fails the job at once, anything else is retried with backoff.

    With a broker the retry is a Celery retry (countdown, survives this worker). In eager
    mode Celery cannot schedule one (``retry`` raises out of ``.delay``), so the step is
    retried here, in-process, with the same backoff.
    """
    settings = get_settings()
    attempt = task.request.retries or 0
    while True:
        try:
            return step()
        except EarshotError as exc:
            if not exc.retryable:
                log.warning("job %s failed: %s (%s)", job_id, exc.message, exc.code)
                with session_scope() as s:
                    fail_job(s, job_id, exc)
                _notify(job_id)
                return None
            log.warning("job %s: %s (%s), attempt %d", job_id, exc.message, exc.code, attempt + 1)
            error: BaseException = exc
        except Exception as exc:  # a bug or an outage: retry, then fail with the reason
            log.exception("job %s step failed", job_id)
            error = exc
        if attempt >= settings.task_max_retries:
            with session_scope() as s:
                fail_job(s, job_id, error)
            _notify(job_id)
            return None
        delay = settings.task_retry_backoff_s * 2**attempt
        if not task.request.is_eager:
            raise task.retry(exc=error, countdown=delay)
        time.sleep(delay)
        attempt += 1


@app.task(bind=True, name="earshot.process_job", max_retries=None)
def process_job(self: Task, job_id: str) -> None:
    indices = _guarded(self, job_id, lambda: pipeline.prepare_job(job_id, get_settings()))
    if indices is None:
        return
    for index in indices:
        analyze_segment.delay(job_id, index)
    if not indices:
        finalize_job.delay(job_id)


@app.task(bind=True, name="earshot.analyze_segment", max_retries=None)
def analyze_segment(self: Task, job_id: str, index: int) -> None:
    done = _guarded(self, job_id, lambda: pipeline.analyze_segment(job_id, index, get_engine()))
    if done:
        finalize_job.delay(job_id)


@app.task(bind=True, name="earshot.finalize_job", max_retries=None)
def finalize_job(self: Task, job_id: str) -> None:
    if _guarded(self, job_id, lambda: pipeline.finalize_job(job_id, get_engine(), get_settings())):
        _notify(job_id)


@app.task(bind=True, name="earshot.deliver_callback", max_retries=None)
def deliver_callback(self: Task, delivery_id: str) -> None:
    """One attempt at a completion callback; retried with backoff until delivered or given up."""
    from earshot.ingest.callbacks import deliver

    attempt = deliver(delivery_id, get_settings())
    # eager mode (no broker) has no countdown: retry in-process with short pauses
    while attempt.retry_in_s is not None and self.request.is_eager:
        time.sleep(min(attempt.retry_in_s, 1.0))
        attempt = deliver(delivery_id, get_settings())
    if attempt.retry_in_s is not None:
        raise self.retry(countdown=attempt.retry_in_s)


def _notify(job_id: str) -> None:
    """Queue the completion callback of a job that just finished; never fails the caller."""
    try:
        from earshot.ingest.callbacks import schedule

        delivery_id = schedule(job_id, get_settings())
        if delivery_id:
            deliver_callback.delay(delivery_id)
    except Exception:
        log.warning("cannot schedule the callback of job %s", job_id, exc_info=True)


def enqueue(job_id: str) -> Any:
    return process_job.delay(job_id)
