"""The sweeper (`earshot jobs reap`): stuck jobs, outage failures, unsettled jobs, pending
callbacks; `earshot jobs retry`. On PostgreSQL; the queue is a list (what was sent)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from earshot.callbacks.models import CallbackDelivery
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.base import utcnow
from earshot.db.session import session_scope
from earshot.errors import StorageError
from earshot.jobs.service import create_job, finish_job
from earshot.jobs.watchdog import observe, reap
from earshot.storage import ObjectInfo
from tests.fixtures.earshot import apply_env


@pytest.fixture
def env(earshot_env: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    return apply_env(
        monkeypatch, job_stale_after_s="60", job_retry_failed_after_s="30", job_infra_retry_limit="2",
        callback_url="https://hooks.example.com/x", callback_secret="s" * 20,
    )


def _job(name: str, status: str = "queued", **changes: object) -> str:
    with session_scope() as s:
        job, _ = create_job(
            s, source=ObjectInfo(uri=f"file:///in/{name}.wav", size=10, etag=f"e-{name}", version_id=None),
            tasks=["transcribe"], engine="local",
        )
        job.status = status
        for key, value in changes.items():
            setattr(job, key, value)
        return job.id


def test_a_job_whose_lease_expired_is_sent_again_once_per_window(env: Settings) -> None:
    old = utcnow() - timedelta(seconds=120)
    stuck = _job("stuck", "running", started_at=old, heartbeat_at=old)
    alive = _job("alive", "running", started_at=old, heartbeat_at=utcnow())
    lost = _job("lost", "queued", created_at=old)
    sent: list[str] = []
    report = reap(settings=env, enqueue=sent.append, send_callback=sent.append)
    assert {stuck, lost} <= set(report.requeued) and {stuck, lost} <= set(sent)
    assert alive not in sent
    # the lease was renewed: the next sweep leaves them alone for another window
    assert not {stuck, lost} & set(reap(settings=env, enqueue=sent.append, send_callback=sent.append).requeued)
    assert observe(settings=env)["stuck"] == 0


def test_an_outage_failure_is_retried_after_a_while_up_to_a_limit(env: Settings) -> None:
    job_id = _job("outage", "running")
    with session_scope() as s:
        down = StorageError("S3 unreachable")
        down.retryable = True
        finish_job(s, job_id, "failed", settings=env, error=down, retryable=True)
    sent: list[str] = []
    callbacks: list[str] = []
    # settled first (scratch, the failure's callback), not retried before the delay
    report = reap(settings=env, enqueue=sent.append, send_callback=callbacks.append)
    assert job_id not in report.retried and job_id not in sent
    later = utcnow() + timedelta(seconds=90)  # past the settle grace (3 heartbeats) and the retry delay
    report = reap(settings=env, enqueue=sent.append, send_callback=callbacks.append, now=later)
    assert job_id in report.retried and job_id in sent
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "queued" and not job.retryable
        assert job.options["infra_retries"] == 1 and job.error_code is None
    for attempt in (2, 3):
        with session_scope() as s:
            finish_job(s, job_id, "failed", settings=env, error=down, retryable=True)
            s.get(m.Job, job_id).settled_at = utcnow()  # type: ignore[union-attr]
        report = reap(settings=env, enqueue=sent.append, send_callback=callbacks.append, now=later + timedelta(minutes=attempt))
        assert (job_id in report.retried) is (attempt == 2)  # at most EARSHOT_JOB_INFRA_RETRY_LIMIT
    assert observe(settings=env)["failed_retryable"] >= 1


def test_a_terminal_job_left_unsettled_is_settled_and_its_callback_sent(env: Settings, tmp_path: Path) -> None:
    job_id = _job("unsettled", "running")
    with session_scope() as s:
        finish_job(s, job_id, "succeeded", settings=env)
    scratch = Path(env.scratch_url.removeprefix("file://")) / job_id
    scratch.mkdir(parents=True)
    (scratch / "seg-00000.flac").write_bytes(b"x")
    callbacks: list[str] = []
    # a worker died right after the commit; within the grace period nothing happens
    with session_scope() as s:
        [delivery_id] = [d.id for d in s.query(CallbackDelivery).filter_by(job_id=job_id)]
    assert job_id not in reap(settings=env, enqueue=lambda _: None, send_callback=callbacks.append).settled
    report = reap(settings=env, enqueue=lambda _: None, send_callback=callbacks.append, now=utcnow() + timedelta(minutes=2))
    assert job_id in report.settled and callbacks.count(delivery_id) == 1
    assert not any(scratch.rglob("*.flac"))
    # still pending long after: sent again by a later sweep
    report = reap(settings=env, enqueue=lambda _: None, send_callback=callbacks.append, now=utcnow() + timedelta(minutes=5))
    assert delivery_id in report.callbacks and observe(settings=env)["pending_callbacks"] >= 1


def test_jobs_retry_resets_failed_jobs_by_id_or_by_code(env: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.tasks
    from services.cli.main import app

    sent: list[str] = []
    monkeypatch.setattr(workers.tasks, "enqueue", sent.append)
    a = _job("a", "failed", error_code="storage_error", finished_at=utcnow())
    b = _job("b", "failed", error_code="not_audio", finished_at=utcnow())
    c = _job("c", "succeeded")
    runner = CliRunner()
    result = runner.invoke(app, ["jobs", "retry", "--failed", "--code", "storage_error"])
    assert result.exit_code == 0, result.output
    assert a in sent and b not in sent
    result = runner.invoke(app, ["jobs", "retry", b, c])
    assert result.exit_code == 1 and sent[-1] == b and c not in sent and c in result.output  # c never failed
    with session_scope() as s:
        assert [s.get(m.Job, j).status for j in (a, b, c)] == ["queued", "queued", "succeeded"]  # type: ignore[union-attr]
