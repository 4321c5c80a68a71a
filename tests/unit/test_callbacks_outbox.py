"""Completion callbacks: the outbox row, HMAC signature, backoff, delivery state, SSRF checks,
and the Celery hook in eager mode."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from earshot.callbacks.models import CallbackDelivery
from earshot.callbacks.outbox import MAX_BACKOFF_S, backoff_s, callback_body, deliver, require_secret
from earshot.callbacks.signing import SIGNATURE_HEADER, sign, verify
from earshot.callbacks.ssrf import CallbackRefused, PinnedTransport, check_callback_url, resolve_allowed
from earshot.config import Settings
from earshot.db import migrate
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.errors import ConfigError
from earshot.jobs.service import finish_job
from tests.fixtures.earshot import apply_env
from tests.fixtures.ingest import CallbackReceiver

SECRET = "s3cr3t"


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Settings]:
    """SQLite migrated to every head (the other dialect than the integration tests)."""
    monkeypatch.delenv("EARSHOT_BROKER_URL", raising=False)
    settings = apply_env(
        monkeypatch,
        database_url=f"sqlite:///{tmp_path / 'cb.db'}",
        callback_secret=SECRET,
        callback_backoff_s="0.01",
        callback_max_attempts="4",
        callback_allow_http="true",
        callback_allow_private="true",
        output_url=(tmp_path / "out").as_uri(),
        scratch_url=(tmp_path / "scratch").as_uri(),
    )
    migrate.upgrade("heads", url=settings.database_url)
    yield settings


def make_job(callback_url: str | None = "http://hooks.test/cb", uri: str = "s3://b/a.wav") -> str:
    with session_scope() as s:
        audio = m.AudioFile(uri=uri, bucket="b", key="a.wav", version="e1")
        s.add(audio)
        s.flush()
        job = m.Job(
            audio_file_id=audio.id, source_uri=uri, status="running", tasks=["transcribe"], engine="local",
            idempotency_key=f"{uri}@e1", callback_url=callback_url,
        )
        s.add(job)
        s.flush()
        return job.id


def finish(job_id: str, status: str, settings: Settings) -> str | None:
    """Make the job terminal; the outbox row written in that same transaction, if any."""
    with session_scope() as s:
        finish_job(s, job_id, status, settings=settings)
        row = s.query(CallbackDelivery).filter_by(job_id=job_id).one_or_none()
        return row.id if row is not None else None


def test_signature_verifies_only_the_exact_body_and_secret() -> None:
    body = callback_body("j1", "succeeded")
    assert json.loads(body) == {"job_id": "j1", "status": "succeeded"}
    sig = sign(body, SECRET)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify(body, sig, SECRET)
    assert not verify(body + b" ", sig, SECRET)
    assert not verify(body, sig, "other")
    assert not verify(body, None, SECRET)


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_s(a, 2.0, jitter=False) for a in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert backoff_s(40, 2.0, jitter=False) == MAX_BACKOFF_S
    for _ in range(50):
        assert 1.6 <= backoff_s(1, 2.0) <= 2.4


def transport(codes: list[int], seen: list[httpx.Request]) -> httpx.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(codes[min(len(seen), len(codes)) - 1], text="secret receiver text")

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_outbox_row_is_written_with_the_terminal_status_once(db: Settings) -> None:
    job_id = make_job()
    delivery = finish(job_id, "succeeded", db)
    assert delivery is not None
    assert finish(job_id, "failed", db) == delivery  # already terminal: outcome and row stand
    with session_scope() as s:
        job = s.get(m.Job, job_id)
        assert job is not None and job.status == "succeeded" and job.settled_at is None


def test_delivery_retries_then_succeeds_once_and_stores_no_body(db: Settings) -> None:
    job_id = make_job()
    delivery = finish(job_id, "succeeded", db)
    assert delivery is not None
    seen: list[httpx.Request] = []
    client = transport([503, 500, 200], seen)
    first = deliver(delivery, db, client=client)
    assert not first.delivered and first.retry_in_s is not None and first.status_code == 503
    with session_scope() as s:
        row = s.get(CallbackDelivery, delivery)
        assert row is not None and row.last_error == "HTTP 503" and row.next_attempt_at is not None
    assert deliver(delivery, db, client=client).retry_in_s is not None
    assert deliver(delivery, db, client=client).delivered
    assert deliver(delivery, db, client=client).delivered  # no fourth POST
    assert len(seen) == 3
    for i, request in enumerate(seen, start=1):
        assert json.loads(request.content) == {"job_id": job_id, "status": "succeeded"}
        assert verify(request.content, request.headers[SIGNATURE_HEADER], SECRET)
        assert request.headers["X-Earshot-Delivery"] == delivery
        assert request.headers["X-Earshot-Attempt"] == str(i)
    with session_scope() as s:
        row = s.get(CallbackDelivery, delivery)
        assert row is not None and row.state == "delivered" and row.attempts == 3


def test_permanent_4xx_redirects_and_max_attempts_give_up(db: Settings) -> None:
    seen: list[httpx.Request] = []
    d_a = finish(make_job(uri="s3://b/a.wav"), "succeeded", db)
    d_r = finish(make_job(uri="s3://b/r.wav"), "succeeded", db)
    d_b = finish(make_job(uri="s3://b/b.wav"), "failed", db)
    assert d_a and d_r and d_b
    gone = deliver(d_a, db, client=transport([410], seen))
    assert not gone.delivered and gone.retry_in_s is None
    moved = deliver(d_r, db, client=transport([302], seen))  # never followed
    assert not moved.delivered and moved.retry_in_s is None and moved.status_code == 302
    client = transport([500], seen)
    results = [deliver(d_b, db, client=client) for _ in range(5)]
    assert [r.retry_in_s is not None for r in results[:3]] == [True, True, True]
    assert results[3].retry_in_s is None and not results[3].delivered  # 4th attempt = max
    assert len(seen) == 2 + 4
    with session_scope() as s:
        states = {r.id: r.state for r in s.query(CallbackDelivery)}
    assert states == {d_a: "failed", d_r: "failed", d_b: "failed"}


def test_no_url_means_no_outbox_row(db: Settings) -> None:
    assert finish(make_job(callback_url=None, uri="s3://b/c.wav"), "succeeded", db) is None


def test_unsigned_callbacks_are_refused(db: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    delivery = finish(make_job(), "succeeded", db)
    assert delivery is not None
    unsigned = db.model_copy(update={"callback_secret": None})
    seen: list[httpx.Request] = []
    attempt = deliver(delivery, unsigned, client=transport([200], seen))
    assert not attempt.delivered and attempt.retry_in_s is None and seen == []
    with pytest.raises(ConfigError):
        require_secret(unsigned.model_copy(update={"callback_url": "https://hooks.example.com/x"}))


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",  # not https
        "https://127.0.0.1/x",
        "https://2130706433/x",  # decimal
        "https://0177.0.0.1/x",  # octal
        "https://0x7f.1/x",  # hex, short
        "https://[::ffff:127.0.0.1]/x",  # IPv4-mapped IPv6
        "https://[::1]/x",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/x",
        "https://10.1.2.3/x",
        "https://224.0.0.1/x",
        "https://localhost/x",
        "https://user:pw@hooks.example.com/x",
    ],
)
def test_callback_urls_to_private_places_are_refused(url: str) -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    with pytest.raises(CallbackRefused):
        check_callback_url(url, settings=settings)


def test_public_https_url_passes_and_allow_list_narrows_it() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert check_callback_url("https://hooks.example.com/x", settings=settings)
    only = settings.model_copy(update={"callback_allowed_hosts": ["*.partner.example"]})
    assert check_callback_url("https://a.partner.example/x", settings=only)
    with pytest.raises(CallbackRefused):
        check_callback_url("https://hooks.example.com/x", settings=only)


def _resolver(*answers: str) -> Any:
    calls: list[str] = []

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        calls.append(host)
        address = answers[min(len(calls), len(answers)) - 1]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        return [(family, socket.SOCK_STREAM, 6, "", (address, port))]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


def test_dns_rebinding_is_caught_at_connect_time() -> None:
    """The name passed the URL check; at connect time it resolves to loopback: refused."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    url = "https://rebind.example.com/hook"
    check_callback_url(url, settings=settings)
    assert resolve_allowed("rebind.example.com", 443, settings=settings, resolver=_resolver("93.184.216.34")) == "93.184.216.34"
    with pytest.raises(CallbackRefused, match="loopback"):
        resolve_allowed("rebind.example.com", 443, settings=settings, resolver=_resolver("127.0.0.1"))
    client = httpx.Client(transport=PinnedTransport(settings, resolver=_resolver("169.254.169.254")))
    with pytest.raises(CallbackRefused, match="link-local"):
        client.post(url, content=b"{}")


def test_pinned_transport_connects_to_the_checked_address(callback_receiver: CallbackReceiver) -> None:
    """It resolves once and connects to that address, keeping the name in the Host header."""
    settings = Settings(_env_file=None, callback_allow_private=True, callback_allow_http=True)  # type: ignore[call-arg]
    port = int(callback_receiver.url.rsplit(":", 1)[1].split("/")[0])
    resolver = _resolver("127.0.0.1")
    with httpx.Client(transport=PinnedTransport(settings, resolver=resolver)) as client:
        response = client.post(f"http://hooks.invalid:{port}/hook", content=b"{}")
    assert response.status_code == 200 and resolver.calls == ["hooks.invalid"]
    headers, _ = callback_receiver.calls[-1]
    assert headers["host"] == f"hooks.invalid:{port}"


def test_failed_job_fires_callback_through_celery_eager(
    db: Settings, monkeypatch: pytest.MonkeyPatch, callback_receiver: CallbackReceiver, tmp_path: Path
) -> None:
    """A job whose source is missing fails in process_job; the outbox row is POSTed, retried twice."""
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
        assert row is not None and row.status == "failed" and row.error_code == "source_not_found"
        assert row.settled_at is not None
    assert settings.callback_url == callback_receiver.url
    bodies = callback_receiver.bodies()
    assert bodies == [{"job_id": job_id, "status": "failed"}] * 3
    headers, body = callback_receiver.calls[-1]
    assert verify(body, headers["x-earshot-signature"], SECRET)
