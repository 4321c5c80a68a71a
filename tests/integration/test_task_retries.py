"""Retries in the Celery task wrapper: transient errors retry with backoff, bad input fails at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import Task

from earshot.config import Settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import AudioError, EngineUnavailable
from earshot.jobs.service import SourceObject, create_job
from tests.fixtures.earshot import apply_env
from workers.celery_app import app
from workers.tasks import _guarded


def _job() -> str:
    with session_scope() as s:
        job, _ = create_job(
            s, source=SourceObject(uri="file:///nowhere.wav", bucket=None, key="/nowhere.wav"),
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
    return apply_env(monkeypatch, task_retry_backoff_s="0.01", task_max_retries="3")


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


def test_retries_exhausted_fail_the_job_with_the_reason(fast_retries: Settings) -> None:
    job_id = _job()
    calls, step = _flaky(10, EngineUnavailable("server gone"))
    assert _run(step, job_id) is None
    assert len(calls) == 4  # the first try and three retries
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed"
        assert job.error_code == "engine_unavailable" and job.error_message == "server gone"


def test_bad_input_is_not_retried(fast_retries: Settings) -> None:
    job_id = _job()
    calls, step = _flaky(10, AudioError("not an audio file", code="not_audio"))
    assert _run(step, job_id) is None
    assert len(calls) == 1
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "failed" and job.error_code == "not_audio"
