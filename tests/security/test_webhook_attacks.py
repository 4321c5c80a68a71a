"""Issue 14, "the webhook ingest source is open by default": each attack, replayed, now fails.

The bridge behind the webhook is a recorder: what matters here is what the webhook lets
through to it, and what it answers.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from earshot.config import Settings
from earshot.errors import ConfigError
from earshot.ingest.bridge import Bridge, Delivery, Outcome
from earshot.ingest.events import MAX_RECORDS, BadMessage, parse_message
from earshot.ingest.submit import Submitted
from earshot.ingest.webhook import SnsVerifier, WebhookServer, signed_headers
from earshot.listeners import ListenerLimits
from tests.unit.test_ingest_webhook import CERT_URL, TOPIC, signer, sns_message  # noqa: F401

SECRET = "webhook-secret-0123456789"
FORGED = json.dumps({"Records": [{
    "eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "eventTime": "2026-11-26T10:00:00Z",
    "s3": {"bucket": {"name": "someone-elses-bucket"}, "object": {"key": "secret.wav", "size": 10}},
}]}).encode()


class Recorder:
    def __init__(self, outcome: Outcome | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.outcome = outcome or Outcome()

    def handle(self, delivery: Delivery) -> Outcome:
        self.deliveries.append(delivery)
        return self.outcome


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"ingest_buckets": ["uploads"], **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def make(s: Settings, bridge: Recorder, pem: bytes = b"", limits: ListenerLimits | None = None) -> WebhookServer:
    return WebhookServer("127.0.0.1", 0, cast(Bridge, bridge), s,
                         sns_verifier=SnsVerifier(fetch=lambda url: pem), confirm=lambda url: 200, limits=limits)


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, "neither EARSHOT_INGEST_WEBHOOK_SECRET"),  # the old default: open to anyone
        ({"ingest_webhook_secret": "short"}, "shorter than 16"),
        ({"ingest_webhook_secret": SECRET, "ingest_buckets": []}, "EARSHOT_INGEST_BUCKETS"),
        ({"ingest_sns_topic_arns": [TOPIC], "ingest_sns_verify": False}, "SNS_VERIFY is off"),
    ],
)
def test_webhook_refuses_to_start_without_its_locks(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        make(settings(**overrides), Recorder())


@pytest.mark.parametrize(
    "headers",
    [
        {},  # a plain forged S3 event
        {"Authorization": f"Bearer {SECRET}"},  # the old static-token ways in are closed
        {"Authorization": "Basic " + base64.b64encode(f"x:{SECRET}".encode()).decode()},
        {"X-Earshot-Signature": "sha256=" + "0" * 64, "X-Earshot-Timestamp": str(int(time.time()))},
    ],
    ids=["unsigned", "bearer", "basic", "bad-signature"],
)
def test_forged_s3_event_is_refused_before_the_bridge(headers: dict[str, str]) -> None:
    bridge = Recorder()
    srv = make(settings(ingest_webhook_secret=SECRET), bridge)
    try:
        assert srv.handle(FORGED, headers) == (401, {"error": "not authenticated"})
    finally:
        srv.shutdown()
    assert bridge.deliveries == []


def test_replayed_signed_request_is_refused_after_five_minutes() -> None:
    bridge = Recorder()
    srv = make(settings(ingest_webhook_secret=SECRET), bridge)
    try:
        old = signed_headers(FORGED, SECRET, now=time.time() - 301)
        assert srv.handle(FORGED, old)[0] == 401
        future = signed_headers(FORGED, SECRET, now=time.time() + 301)
        assert srv.handle(FORGED, future)[0] == 401
        # the signature covers the timestamp: moving it forward breaks the signature
        moved = {**old, "X-Earshot-Timestamp": str(int(time.time()))}
        assert srv.handle(FORGED, moved)[0] == 401
        # and the body: a signed empty message cannot carry another body
        assert srv.handle(FORGED, signed_headers(b"{}", SECRET))[0] == 401
        assert srv.handle(FORGED, signed_headers(FORGED, SECRET))[0] == 202
    finally:
        srv.shutdown()
    assert len(bridge.deliveries) == 1


def _resign(key: rsa.RSAPrivateKey, doc: dict[str, Any]) -> dict[str, Any]:
    data = SnsVerifier.string_to_sign(doc)
    assert data is not None
    return {**doc, "Signature": base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()}


def test_sns_messages_from_2001_and_from_foreign_topics_are_refused(
    signer: tuple[rsa.RSAPrivateKey, bytes],  # noqa: F811
) -> None:
    key, pem = signer
    headers = {"x-amz-sns-message-type": "Notification"}
    bridge = Recorder()
    srv = make(settings(ingest_sns_topic_arns=[TOPIC]), bridge, pem)
    nobody = make(settings(ingest_webhook_secret=SECRET), Recorder(), pem)  # no topic allow-list
    try:
        fresh = sns_message(key)
        stale = _resign(key, {**fresh, "Timestamp": "2001-09-09T01:46:40.000Z"})
        future = _resign(key, {**fresh, "Timestamp": (datetime.now(UTC) + timedelta(hours=1)).isoformat()})
        foreign = _resign(key, {**fresh, "TopicArn": "arn:aws:sns:us-east-1:999999999999:theirs"})
        for doc in (stale, future, foreign):
            assert srv.handle(json.dumps(doc).encode(), headers)[0] == 401
        assert nobody.handle(json.dumps(fresh).encode(), headers)[0] == 401
        assert bridge.deliveries == []
        assert srv.handle(json.dumps(fresh).encode(), headers)[0] == 202
    finally:
        srv.shutdown()
        nobody.shutdown()


def test_answers_carry_no_job_ids_and_no_hint_of_existence() -> None:
    made = Outcome(jobs=[Submitted(job_id="1b4e28ba-2fa1-11d2-883f-0016d3cca427", uri="s3://uploads/a.wav",
                                   created=True, enqueued=True)])
    missing = Outcome(skipped=[("s3://uploads/nothing.wav", "not_found")])
    dead = Outcome(dead_letters=[("not_found", "s3://uploads/gone.wav does not exist")])
    answers = []
    for outcome in (made, missing, dead):
        srv = make(settings(ingest_webhook_secret=SECRET), Recorder(outcome))
        try:
            answers.append(srv.handle(FORGED, signed_headers(FORGED, SECRET)))
        finally:
            srv.shutdown()
    assert answers == [(202, {"status": "accepted"})] * 3


def test_a_message_with_too_many_records_is_refused_whole() -> None:
    record = json.loads(FORGED)["Records"][0]
    with pytest.raises(BadMessage) as caught:
        parse_message(json.dumps({"Records": [record] * (MAX_RECORDS + 1)}))
    assert caught.value.reason == "too_many_records"
    assert len(parse_message(json.dumps({"Records": [record] * MAX_RECORDS})).events) == MAX_RECORDS


@pytest.fixture
def slow_limits_server() -> Iterator[WebhookServer]:
    srv = make(settings(ingest_webhook_secret=SECRET), Recorder(),
               limits=ListenerLimits(header_timeout_s=0.5, body_timeout_s=0.5, body_idle_timeout_s=0.5))
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{srv.port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        yield srv
    finally:
        srv.shutdown()
        thread.join(10)


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before closing the connection (within ``seconds``)."""
    sock.settimeout(seconds)
    received = b""
    while True:
        chunk = sock.recv(4096)  # socket.timeout (a failure) if the server keeps it open
        if not chunk:
            return received
        received += chunk


def test_stalled_headers_and_bodies_do_not_hold_the_server(slow_limits_server: WebhookServer) -> None:
    port = slow_limits_server.port
    with socket.create_connection(("127.0.0.1", port)) as sock:  # slowloris: headers never end
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        assert _closed_within(sock, 5) == b""
    with socket.create_connection(("127.0.0.1", port)) as sock:  # a body that never arrives
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"Rec")
        assert _closed_within(sock, 5).startswith(b"HTTP/1.1 408")
    assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200


def test_webhook_listens_on_loopback_unless_told_otherwise() -> None:
    from earshot.ingest.webhook import parse_webhook_url

    assert parse_webhook_url("webhook://:8080")[0] == "127.0.0.1"
    srv = make(settings(ingest_webhook_secret=SECRET), Recorder())
    try:
        assert srv._socket.getsockname()[0] == "127.0.0.1"
    finally:
        srv.shutdown()
