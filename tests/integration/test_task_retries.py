"""Retries in the Celery task wrapper: transient errors retry with backoff, bad input fails at once."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from celery import Task
from sqlalchemy.exc import OperationalError

from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import AudioError, EngineUnavailable
from earshot.jobs.service import create_job
from earshot.storage import ObjectInfo
from tests.fixtures.earshot import apply_env
from workers.celery_app import app
from workers.tasks import _guarded


def _job() -> str:
    with session_scope() as s:
        job, _ = create_job(
            s, source=ObjectInfo(uri="file:///nowhere.wav", size=None, etag=None, version_id=None),
            tasks=["transcribe"], engine="local",
        )
        return job.id


def _flaky(failures: int, error: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def step() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return "done"

    return calls, step


@pytest.fixture
def fast_retries(earshot_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return apply_env(
        monkeypatch, task_retry_backoff_s="0.01", task_retry_max_delay_s="0.05", task_max_retries="3",
        task_retry_window_s="0.3",
    )


def _run(step: object, job_id: str) -> object:
    @app.task(bind=True, name=f"test.guarded.{job_id}")
    def guarded(self: Task) -> object:
        return _guarded(self, job_id, step)  # type: ignore[arg-type]

    return guarded.apply().get()


def test_transient_engine_errors_are_retried_in_process(fast_retries: Settings, tmp_path: Path) -> None:
    job_id = _job()
    calls, step = _flaky(2, EngineUnavailable("server restarting"))
    assert _run(step, job_id) == "done"
    assert len(calls) == 3
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "queued"


def test_an_outage_longer_than_the_window_fails_the_job_as_retryable(fast_retries: Settings) -> None:
    job_id = _job()
    calls, step = _flaky(10_000, EngineUnavailable("server gone"))
    started = time.monotonic()
    assert _run(step, job_id) is None
    assert time.monotonic() - started >= 0.3  # retried over the whole window, not a count
    assert len(calls) > 1
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed" and job.retryable
        assert job.error_code == "engine_unavailable" and job.error_message == "server gone"


def test_a_database_error_is_an_outage_not_a_bug(fast_retries: Settings) -> None:
    job_id = _job()
    down = OperationalError("SELECT 1", {}, Exception("connection refused"))
    _calls, step = _flaky(10_000, down)
    assert _run(step, job_id) is None
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed" and job.retryable
        assert job.error_code == "database_unavailable"


def test_a_bug_is_retried_a_few_times_then_fails_for_good(fast_retries: Settings, caplog: pytest.LogCaptureFixture) -> None:
    job_id = _job()
    calls, step = _flaky(10, ZeroDivisionError("boom"))
    with caplog.at_level(logging.WARNING, logger="earshot.tasks"):
        assert _run(step, job_id) is None
    assert len(calls) == 4  # the first try and three retries
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed" and not job.retryable
        assert job.error_code == "internal_error"
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    final = [r for r in caplog.records if "failed for good" in r.getMessage()]
    # one line per retry without a traceback; one final line with the job, the key and the reason
    assert len(retries) == 3 and all(r.exc_info is None and "\n" not in r.getMessage() for r in retries)
    assert len(final) == 1 and final[0].exc_info is not None
    assert job_id in final[0].getMessage() and "nowhere.wav" in final[0].getMessage()


def test_bad_input_is_not_retried(fast_retries: Settings) -> None:
    job_id = _job()
    calls, step = _flaky(10, AudioError("not an audio file", code="not_audio"))
    assert _run(step, job_id) is None
    assert len(calls) == 1
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed" and job.error_code == "not_audio"


def test_a_task_that_cannot_record_its_outcome_gives_its_message_back(fast_retries: Settings) -> None:
    """The database is gone when the job should be marked failed: reject + requeue, never ack."""
    from celery.exceptions import Reject

    from workers.tasks import _end

    job_id = _job()
    unreachable = fast_retries.model_copy(
        update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2"}
    )
    with pytest.raises(Reject) as info:
        _end(job_id, "failed", AudioError("not an audio file", code="not_audio"), unreachable)
    assert info.value.requeue is True
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "queued"  # untouched: the redelivery decides


def test_a_running_step_renews_its_lease(fast_retries: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = apply_env(monkeypatch, job_heartbeat_s="0.2")
    job_id = _job()
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.heartbeat_at is None
    seen: list[object] = []

    def slow_step() -> str:
        time.sleep(1.0)
        with session_scope() as s:
            seen.append(s.get(m.Job, job_id).heartbeat_at)  # type: ignore[union-attr]
        return "done"

    assert settings.job_heartbeat_s == 0.2
    assert _run(slow_step, job_id) == "done"
    assert seen[0] is not None  # renewed while the step ran, by the lease thread
