"""Completion callbacks: HMAC signature, backoff, delivery state, and the Celery hook (eager)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from earshot.config import Settings
from earshot.db import migrate
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.ingest import callbacks
from earshot.ingest.models import CallbackDelivery
from tests.fixtures.earshot import apply_env
from tests.fixtures.ingest import CallbackReceiver

SECRET = "s3cr3t"


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """SQLite migrated to 0001 + 0003_ingest only (this migration, on the other dialect)."""
    monkeypatch.delenv("EARSHOT_BROKER_URL", raising=False)
    settings = apply_env(
        monkeypatch,
        database_url=f"sqlite:///{tmp_path / 'cb.db'}",
        callback_secret=SECRET,
        callback_backoff_s="0.01",
        callback_max_attempts="4",
        output_url=(tmp_path / "out").as_uri(),
        scratch_url=(tmp_path / "scratch").as_uri(),
    )
    migrate.upgrade("0003_ingest")
    yield settings


def make_job(status: str = "succeeded", callback_url: str | None = "http://hooks.test/cb", uri: str = "s3://b/a.wav") -> str:
    with session_scope() as s:
        audio = m.AudioFile(uri=uri, bucket="b", key="a.wav", version="e1")
        s.add(audio)
        s.flush()
        job = m.Job(
            audio_file_id=audio.id, source_uri=uri, status=status, tasks=["transcribe"], engine="local",
            idempotency_key=f"{uri}@{status}", callback_url=callback_url,
        )
        s.add(job)
        s.flush()
        return job.id


def test_sign_and_verify() -> None:
    body = callbacks.callback_body("j1", "succeeded")
    assert json.loads(body) == {"job_id": "j1", "status": "succeeded"}
    sig = callbacks.sign(body, SECRET)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert callbacks.verify(body, sig, SECRET)
    assert not callbacks.verify(body + b" ", sig, SECRET)
    assert not callbacks.verify(body, sig, "other")
    assert not callbacks.verify(body, None, SECRET)


def test_backoff_grows_and_is_capped() -> None:
    assert [callbacks.backoff_s(a, 2.0, jitter=False) for a in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert callbacks.backoff_s(40, 2.0, jitter=False) == callbacks.MAX_BACKOFF_S
    for _ in range(50):
        assert 1.6 <= callbacks.backoff_s(1, 2.0) <= 2.4


def transport(codes: list[int], seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(codes[min(len(seen), len(codes)) - 1])

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_delivery_retries_then_succeeds_once(db: Settings) -> None:
    job_id = make_job()
    delivery = callbacks.schedule(job_id, db)
    assert delivery is not None
    assert callbacks.schedule(job_id, db) == delivery  # still pending: same delivery
    seen: list[httpx.Request] = []
    client = transport([503, 500, 200], seen)
    first = callbacks.deliver(delivery, db, client=client)
    assert not first.delivered and first.retry_in_s is not None and first.status_code == 503
    second = callbacks.deliver(delivery, db, client=client)
    assert second.retry_in_s is not None
    third = callbacks.deliver(delivery, db, client=client)
    assert third.delivered
    assert callbacks.deliver(delivery, db, client=client).delivered  # no fourth POST
    assert len(seen) == 3
    for i, request in enumerate(seen, start=1):
        assert json.loads(request.content) == {"job_id": job_id, "status": "succeeded"}
        assert callbacks.verify(request.content, request.headers[callbacks.SIGNATURE_HEADER], SECRET)
        assert request.headers["X-Earshot-Delivery"] == delivery
        assert request.headers["X-Earshot-Attempt"] == str(i)
    with session_scope() as s:
        row = s.get(CallbackDelivery, delivery)
        assert row is not None and row.state == "delivered" and row.attempts == 3
    assert callbacks.schedule(job_id, db) is None  # delivered: never again for this status


def test_permanent_4xx_and_max_attempts_give_up(db: Settings) -> None:
    seen: list[httpx.Request] = []
    job_a = make_job(uri="s3://b/a.wav")
    d_a = callbacks.schedule(job_a, db)
    assert d_a is not None
    gone = callbacks.deliver(d_a, db, client=transport([410], seen))
    assert not gone.delivered and gone.retry_in_s is None
    job_b = make_job(status="failed", uri="s3://b/b.wav")
    d_b = callbacks.schedule(job_b, db)
    assert d_b is not None
    client = transport([500], seen)
    results = [callbacks.deliver(d_b, db, client=client) for _ in range(5)]
    assert [r.retry_in_s is not None for r in results[:3]] == [True, True, True]
    assert results[3].retry_in_s is None and not results[3].delivered  # 4th attempt = max
    assert len(seen) == 1 + 4
    with session_scope() as s:
        states = {r.job_id: r.state for r in s.query(CallbackDelivery)}
    assert states == {job_a: "failed", job_b: "failed"}


def test_no_url_or_not_finished_means_no_callback(db: Settings) -> None:
    assert callbacks.schedule(make_job(callback_url=None, uri="s3://b/c.wav"), db) is None
    assert callbacks.schedule(make_job(status="running", uri="s3://b/d.wav"), db) is None
    assert callbacks.schedule("no-such-job", db) is None


def test_failed_job_fires_callback_through_celery_eager(
    db: Settings, monkeypatch: pytest.MonkeyPatch, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    """A job whose source is missing fails in process_job; the hook POSTs, retrying twice."""
    from workers.tasks import enqueue

    callback_receiver.fail_first = 2
    settings = apply_env(monkeypatch, callback_url=callback_receiver.url)
    missing = (tmp_path / "missing.wav").as_uri()
    with session_scope() as s:
        audio = m.AudioFile(uri=missing, bucket=None, key=str(tmp_path / "missing.wav"), version="")
        s.add(audio)
        s.flush()
        job = m.Job(audio_file_id=audio.id, source_uri=missing, status="queued", tasks=["transcribe"], engine="local", idempotency_key="k-missing")
        s.add(job)
        s.flush()
        job_id = job.id
    enqueue(job_id)
    with session_scope() as s:
        row = s.get(m.Job, job_id)
        assert row is not None and row.status == "failed"
    assert settings.callback_url == callback_receiver.url
    bodies = callback_receiver.bodies()
    assert bodies == [{"job_id": job_id, "status": "failed"}] * 3
    headers, body = callback_receiver.calls[-1]
    assert callbacks.verify(body, headers["x-earshot-signature"], SECRET)
