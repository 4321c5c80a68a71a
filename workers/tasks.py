"""Celery tasks: thin wrappers that call earshot.pipeline and fan out / fan in.

Fan-in is a database latch rather than a chord: every analyze_segment checks whether all
segments are done and enqueues finalize_job, which is idempotent. A chord's counter in the
result backend would double-count a segment redelivered after a worker died (acks_late).

Failures (see ``earshot.jobs.failures``): a verdict ends the job at once; an outage is
retried with jittered backoff for ``EARSHOT_TASK_RETRY_WINDOW_S`` and then fails the job as
``retryable`` (the sweeper retries it); anything else is retried ``EARSHOT_TASK_MAX_RETRIES``
times. A task that cannot record its outcome (the database is down too) rejects its message
with requeue instead of acking it, so the job is never left non-terminal and forgotten.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from celery import Task
from celery.exceptions import Reject, Retry

from earshot import pipeline
from earshot.callbacks.outbox import deliver
from earshot.config import Settings
from earshot.db.models import AudioFile, Job
from earshot.db.session import session_scope
from earshot.engines import get_engine
from earshot.errors import EarshotError
from earshot.jobs.failures import Superseded, backoff_s, outage_code
from earshot.jobs.service import finish_job, renew_lease
from earshot.jobs.watchdog import settle_job
from workers.celery_app import app, task_settings

log = logging.getLogger("earshot.tasks")
T = TypeVar("T")


@contextmanager
def _lease(job_id: str, settings: Settings) -> Iterator[None]:
    """Renew the job's lease while a step runs, so the sweeper knows it is alive."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(settings.job_heartbeat_s):
            try:
                with session_scope(settings.database_url) as s:
                    renew_lease(s, job_id)
            except Exception as exc:  # the step itself will meet the outage and retry
                log.debug("lease of job %s not renewed: %s", job_id, exc)

    thread = threading.Thread(target=beat, name=f"lease-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


def _source_of(job_id: str, settings: Settings) -> str:
    try:
        with session_scope(settings.database_url) as s:
            row = s.get(Job, job_id)
            audio = s.get(AudioFile, row.audio_file_id) if row is not None else None
            return audio.uri if audio is not None else "?"
    except Exception:
        return "?"


def _end(job_id: str, status: str, error: BaseException, settings: Settings, *, retryable: bool = False) -> None:
    """Record a final outcome and settle; if the database refuses, give the message back."""
    try:
        with session_scope(settings.database_url) as s:
            finish_job(s, job_id, status, settings=settings, error=error, retryable=retryable)
    except Exception as exc:
        log.warning("job %s: cannot record %s (%s); message requeued", job_id, status, exc)
        raise Reject(reason=str(exc), requeue=True) from exc
    _settle(job_id, settings)


def _settle(job_id: str, settings: Settings) -> None:
    try:
        settle_job(job_id, settings=settings, send_callback=_send_callback)
    except Exception as exc:  # the sweeper settles it later
        log.warning("job %s not settled yet (%s); the sweeper will", job_id, exc)


def _guarded(task: Task, job_id: str, step: Callable[[], T], *, failing_since: float | None = None) -> T | None:
    """Run a step; a verdict fails the job at once, an outage or a bug is retried.

    With a broker the retry is a Celery retry (countdown, survives this worker). In eager
    mode Celery cannot schedule one (``retry`` raises out of ``.delay``), so the step is
    retried here, in-process, with the same backoff.
    """
    settings = task_settings()
    attempt = task.request.retries or 0
    while True:
        try:
            with _lease(job_id, settings):
                return step()
        except Superseded as exc:
            log.warning("job %s superseded: %s", job_id, exc.message)
            _end(job_id, "superseded", exc, settings)
            return None
        except EarshotError as exc:
            if not exc.retryable:
                log.warning(
                    "job %s failed: %s: %s (%s)", job_id, _source_of(job_id, settings), exc.message, exc.code
                )
                _end(job_id, "failed", exc, settings)
                return None
            error: BaseException = exc
        except (Reject, Retry):
            raise
        except Exception as exc:
            error = exc
        code = outage_code(error)
        now = time.time()
        since = failing_since or now
        if code is not None:
            give_up = now - since >= settings.task_retry_window_s
        else:
            give_up = attempt >= settings.task_max_retries
        if give_up:
            log.error(
                "job %s failed for good after %d attempt(s): %s: %s: %s",
                job_id, attempt + 1, _source_of(job_id, settings), code or "internal_error", error,
                exc_info=error,
            )
            if code is not None and not isinstance(error, EarshotError):
                error = EarshotError(f"{type(error).__name__}: {error}", code=code)
            _end(job_id, "failed", error, settings, retryable=code is not None)
            return None
        delay = backoff_s(attempt, settings.task_retry_backoff_s, settings.task_retry_max_delay_s)
        log.warning(
            "job %s: %s (%s); retry %d in %.1f s", job_id, _one_line(error), code or type(error).__name__,
            attempt + 1, delay,
        )
        if not task.request.is_eager:
            try:
                raise task.retry(countdown=delay, kwargs={**(task.request.kwargs or {}), "failing_since": since})
            except Retry:
                raise
            except Exception as exc:  # the broker refused the retry: hand the message back
                raise Reject(reason=f"cannot schedule a retry: {exc}", requeue=True) from exc
        time.sleep(delay)
        failing_since = since
        attempt += 1


def _one_line(error: BaseException, limit: int = 300) -> str:
    """Driver messages span lines (psycopg adds hints); a retry is one log line."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _publish(send: Callable[[], Any]) -> None:
    """A fan-out publish that fails puts the message back; the step reruns idempotently."""
    try:
        send()
    except Exception as exc:
        if app.conf.task_always_eager:
            raise
        raise Reject(reason=f"cannot publish the next step: {exc}", requeue=True) from exc


@app.task(bind=True, name="earshot.process_job", max_retries=None)
def process_job(self: Task, job_id: str, failing_since: float | None = None) -> None:
    indices = _guarded(
        self, job_id, lambda: pipeline.prepare_job(job_id, task_settings()), failing_since=failing_since
    )
    if indices is None:
        return
    for index in indices:
        _publish(lambda i=index: analyze_segment.delay(job_id, i))  # type: ignore[misc]
    if not indices:
        _publish(lambda: finalize_job.delay(job_id))


@app.task(bind=True, name="earshot.analyze_segment", max_retries=None)
def analyze_segment(self: Task, job_id: str, index: int, failing_since: float | None = None) -> None:
    settings = task_settings()
    done = _guarded(
        self, job_id,
        lambda: pipeline.analyze_segment(job_id, index, get_engine(settings), settings=settings),
        failing_since=failing_since,
    )
    if done:
        _publish(lambda: finalize_job.delay(job_id))


def _fault(point: str) -> None:
    """Test-only: if the file named by ``EARSHOT_TASK_FAULT_FILE`` exists and holds ``point``,
    remove it and SIGKILL this worker's whole process group, as a node failure would."""
    path = os.environ.get("EARSHOT_TASK_FAULT_FILE")
    if not path:
        return
    try:
        with open(path) as f:
            wanted = f.read().strip()
        if wanted != point:
            return
        os.unlink(path)
    except OSError:
        return
    log.error("EARSHOT_TASK_FAULT_FILE: killing this worker at %s", point)
    os.killpg(os.getpgid(0), signal.SIGKILL)


@app.task(bind=True, name="earshot.finalize_job", max_retries=None)
def finalize_job(self: Task, job_id: str, failing_since: float | None = None) -> None:
    settings = task_settings()
    if _guarded(
        self, job_id, lambda: pipeline.finalize_job(job_id, get_engine(settings), settings),
        failing_since=failing_since,
    ):
        _fault("after-succeeded")
    # succeeded now, or earlier by a worker lost before settling: settle from the database
    _settle(job_id, settings)


@app.task(bind=True, name="earshot.deliver_callback", max_retries=None)
def deliver_callback(self: Task, delivery_id: str) -> None:
    """One attempt at a completion callback; retried with backoff until delivered or given up.

    A database outage is retried like any other; the sweeper resends what is still pending.
    """
    settings = task_settings()
    try:
        attempt = deliver(delivery_id, settings)
        # eager mode (no broker) has no countdown: retry in-process with short pauses
        while attempt.retry_in_s is not None and self.request.is_eager:
            time.sleep(min(attempt.retry_in_s, 1.0))
            attempt = deliver(delivery_id, settings)
    except Exception as exc:
        if outage_code(exc) is None or self.request.is_eager:
            raise
        delay = backoff_s(self.request.retries or 0, settings.task_retry_backoff_s, settings.task_retry_max_delay_s)
        log.warning("callback %s: %s; retry in %.1f s", delivery_id, _one_line(exc), delay)
        raise self.retry(countdown=delay) from None
    if attempt.retry_in_s is not None:
        raise self.retry(countdown=attempt.retry_in_s)


def _send_callback(delivery_id: str) -> None:
    deliver_callback.delay(delivery_id)


def enqueue(job_id: str) -> Any:
    return process_job.delay(job_id)


def send_callback(delivery_id: str) -> Any:
    return deliver_callback.delay(delivery_id)
