"""Server outages during a job: ridden out within the retry budget, a clean failure beyond it.

Uses a server of its own (``triton_faults_server``) that these tests stop and start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from earshot.audio.synth import encode_file, tone_with_silences
from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.jobs.submit import submit
from earshot.triton.server import TritonServer
from tests.fixtures.triton import START_TIMEOUT_S, triton_settings

TASKS = ["transcribe", "summarize"]


@pytest.fixture
def faults_server(earshot_env: Settings, triton_faults_server: TritonServer) -> Iterator[TritonServer]:
    if not triton_faults_server.is_running():  # an earlier test left it down
        triton_faults_server.start(timeout=START_TIMEOUT_S)
    yield triton_faults_server


def _job(tmp_path: Path) -> str:
    # 60 s in <= 20 s segments: several engine calls, each quick on the tiny model.
    source = encode_file(tone_with_silences(60.0, [(19.0, 20.5), (39.0, 40.5)]), tmp_path / "call.flac")
    with session_scope() as s:
        job, _ = submit(s, str(source), settings=get_settings(), tasks=TASKS, engine="triton")
        return job.id


def _start(job_id: str) -> threading.Thread:
    from workers.tasks import enqueue

    thread = threading.Thread(target=enqueue, args=(job_id,), daemon=True)
    thread.start()
    return thread


def _wait_first_segment(job_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as s:
            seg = s.scalar(select(m.Segment).where(m.Segment.job_id == job_id, m.Segment.index == 0))
            if seg is not None and seg.status == "done":
                return
        time.sleep(0.05)
    raise AssertionError("segment 0 was never analyzed")


def test_server_stopped_mid_job_job_succeeds_when_it_is_back(
    faults_server: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    triton_settings(
        monkeypatch, faults_server, max_segment_s="20", triton_retry_budget_s=str(START_TIMEOUT_S)
    )
    job_id = _job(tmp_path)
    caplog.set_level(logging.WARNING, logger="earshot.engines.triton")
    worker = _start(job_id)
    _wait_first_segment(job_id)
    faults_server.stop()  # graceful: in-flight requests finish, new ones are refused
    time.sleep(1.0)
    faults_server.start(timeout=START_TIMEOUT_S)
    worker.join(timeout=START_TIMEOUT_S)
    assert not worker.is_alive()

    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        assert job.status == "succeeded", (job.error_code, job.error_message)
        assert (job.segment_count or 0) >= 3 and all(seg.status == "done" for seg in job.segments)
    assert any("unavailable" in r.getMessage() for r in caplog.records), "the outage was never hit"


def test_server_down_longer_than_the_retry_budget_fails_the_job_cleanly(
    faults_server: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's 2 s budget runs out, the task layer retries the outage for its 3 s window
    # (in-process in eager mode), then the job fails.
    settings = triton_settings(
        monkeypatch,
        faults_server,
        max_segment_s="20",
        triton_retry_budget_s="2",
        task_max_retries="1",
        task_retry_backoff_s="0",
        task_retry_window_s="3",
    )
    job_id = _job(tmp_path)
    worker = _start(job_id)
    _wait_first_segment(job_id)
    faults_server.kill()  # a crash; it stays down
    worker.join(timeout=60)
    assert not worker.is_alive()

    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None
        assert job.status == "failed"
        assert job.error_code == "engine_unavailable"
        assert faults_server.grpc_url in (job.error_message or "")
        assert "unavailable for 2 s" in (job.error_message or "")
        statuses = [seg.status for seg in sorted(job.segments, key=lambda seg: seg.index)]
        assert statuses[0] == "done" and "done" not in statuses[1:]  # nothing half-stored
        assert "outputs" not in job.options
        assert job.progress < 1.0
        assert s.scalar(select(m.Summary).where(m.Summary.job_id == job_id, m.Summary.level == "file")) is None
        assert s.scalar(select(m.SpeechOutput).where(m.SpeechOutput.job_id == job_id)) is None
    out_dir = Path(settings.output_url.removeprefix("file://"))
    assert not out_dir.exists() or not any(out_dir.rglob("*.json"))
