"""Handing a created job to the queue, for the API (and anything else that creates jobs).

Two modes, chosen by the caller from ``settings.broker_url``:

- a broker: ``enqueue_or_fail`` hands the job over now. If the broker refuses it, the job is
  marked failed (``enqueue_failed``, so ``retry`` can queue it later) and ``QueueUnavailable``
  is raised, for the API to answer 503.
- embedded (no broker): ``run_in_process`` runs the job in this process after the response
  has gone out; a crash fails the job with the reason instead of vanishing.

Both block (Celery's publish, or the whole job), so async callers run them in a thread. Each
opens and closes its own session inside that one call, so no pooled connection is held while
waiting for a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from earshot.config import Settings
from earshot.db.session import session_scope
from earshot.errors import EngineUnavailable
from earshot.jobs import service

log = logging.getLogger("earshot.jobs")

Enqueuer = Callable[[str], Any]


class QueueUnavailable(EngineUnavailable):
    code = "queue_unavailable"


def _fail(job_id: str, reason: BaseException, *, settings: Settings) -> None:
    with session_scope(settings.database_url) as s:
        service.fail_job(s, job_id, reason)


def enqueue_or_fail(job_id: str, *, settings: Settings, enqueue: Enqueuer) -> None:
    try:
        enqueue(job_id)
    except Exception as exc:
        log.exception("could not enqueue job %s", job_id)
        _fail(job_id, EngineUnavailable(f"the queue refused the job: {exc}", code="enqueue_failed"),
              settings=settings)
        raise QueueUnavailable("the job queue is unavailable; retry the job later") from exc


def run_in_process(job_id: str, *, settings: Settings, enqueue: Enqueuer) -> None:
    try:
        enqueue(job_id)
    except Exception as exc:
        log.exception("job %s failed in process", job_id)
        _fail(job_id, exc, settings=settings)
