"""Webhook source: signed requests and SNS messages get through; HTTP codes; SNS signatures.

The attacks (unsigned, replayed, stale SNS, foreign topics, slow bodies) are in
tests/security/test_webhook_attacks.py.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from earshot.config import Settings
from earshot.ingest.bridge import Bridge, Delivery, Outcome
from earshot.ingest.webhook import SnsVerifier, WebhookServer, parse_webhook_url, signed_headers
from earshot.listeners import ListenerLimits

SECRET = "hook-secret-0123456789"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"
TOPIC = "arn:aws:sns:us-east-1:123456789012:uploads"
EVENT = json.dumps({"Records": []}).encode()


class RecordingBridge:
    """Stands in for the bridge (tested on its own): remembers deliveries, answers a verdict."""

    def __init__(self, action: str = "ack") -> None:
        self.deliveries: list[Delivery] = []
        self.action = action

    def handle(self, delivery: Delivery) -> Outcome:
        self.deliveries.append(delivery)
        return Outcome(action="retry" if self.action == "retry" else "ack")


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sns_message(key: rsa.RSAPrivateKey, kind: str = "Notification", **fields: Any) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    doc: dict[str, Any] = {
        "Type": kind, "MessageId": "mid-1", "TopicArn": TOPIC, "Timestamp": stamp,
        "Message": json.dumps({"Records": []}), "SignatureVersion": "2", "SigningCertURL": CERT_URL,
        **fields,
    }
    if kind != "Notification":
        doc.setdefault("Token", "tok")
        doc.setdefault("SubscribeURL", "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=tok")
    data = SnsVerifier.string_to_sign(doc)
    assert data is not None
    doc["Signature"] = base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()
    return doc


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"ingest_buckets": ["uploads"], **overrides}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def server(
    s: Settings, bridge: RecordingBridge, pem: bytes | None = None, confirmed: list[str] | None = None,
    limits: ListenerLimits | None = None,
) -> WebhookServer:
    def confirm(url: str) -> int:
        if confirmed is not None:
            confirmed.append(url)
        return 200

    return WebhookServer(
        "127.0.0.1", 0, cast(Bridge, bridge), s,
        sns_verifier=SnsVerifier(fetch=lambda url: pem or b""), confirm=confirm, limits=limits,
    )


def test_parse_url_defaults_to_loopback() -> None:
    assert parse_webhook_url("webhook://0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_webhook_url("webhook://127.0.0.1") == ("127.0.0.1", 8080)
    assert parse_webhook_url("webhook://:9000") == ("127.0.0.1", 9000)
    with pytest.raises(ValueError):
        parse_webhook_url("http://x:1")


def test_sns_signature_is_checked_against_an_sns_certificate(signer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signer
    verifier = SnsVerifier(fetch=lambda url: pem)
    doc = sns_message(key)
    assert verifier.verify(doc)
    assert not verifier.verify({**doc, "Message": "tampered"})
    assert not verifier.verify({**doc, "SigningCertURL": "https://evil.example.com/cert.pem"})
    assert not verifier.verify({**doc, "SigningCertURL": CERT_URL.replace("https", "http")})
    assert not verifier.verify({**doc, "SigningCertURL": CERT_URL.replace(".com/", ".com:8443/")})
    assert not verifier.verify({**doc, "SignatureVersion": "3"})
    assert not verifier.verify({**doc, "Signature": "!!"})


def test_signed_request_reaches_the_bridge() -> None:
    bridge = RecordingBridge()
    srv = server(settings(ingest_webhook_secret=SECRET), bridge)
    try:
        code, payload = srv.handle(EVENT, signed_headers(EVENT, SECRET))
    finally:
        srv.shutdown()
    assert (code, payload) == (202, {"status": "accepted"})
    assert [d.body for d in bridge.deliveries] == [EVENT]


def test_verified_sns_notification_from_an_allowed_topic_reaches_the_bridge(
    signer: tuple[rsa.RSAPrivateKey, bytes],
) -> None:
    key, pem = signer
    body = json.dumps(sns_message(key)).encode()
    headers = {"x-amz-sns-message-type": "Notification", "x-amz-sns-message-id": "mid-1"}
    bridge = RecordingBridge()
    srv = server(settings(ingest_sns_topic_arns=[TOPIC]), bridge, pem)
    try:
        assert srv.handle(body, headers)[0] == 202
    finally:
        srv.shutdown()
    assert bridge.deliveries[0].message_id == "mid-1"


def test_sns_subscription_is_confirmed_only_at_the_sns_host(signer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signer
    confirmed: list[str] = []
    bridge = RecordingBridge()
    srv = server(settings(ingest_sns_topic_arns=[TOPIC]), bridge, pem, confirmed)
    headers = {"x-amz-sns-message-type": "SubscriptionConfirmation"}
    try:
        doc = sns_message(key, "SubscriptionConfirmation")
        assert srv.handle(json.dumps(doc).encode(), headers)[0] == 202
        assert confirmed == [doc["SubscribeURL"]]
        # signed, but pointing somewhere that is not SNS: refused (no SSRF)
        evil = sns_message(key, "SubscriptionConfirmation", SubscribeURL="https://evil.example.com/x")
        assert srv.handle(json.dumps(evil).encode(), headers)[0] == 400
        assert len(confirmed) == 1 and bridge.deliveries == []
    finally:
        srv.shutdown()


@pytest.fixture
def live() -> Iterator[tuple[str, RecordingBridge]]:
    bridge = RecordingBridge()
    srv = server(settings(ingest_webhook_secret=SECRET), bridge)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.port}", bridge
    finally:
        srv.shutdown()
        thread.join(10)


def test_http_codes_over_a_real_connection(live: tuple[str, RecordingBridge]) -> None:
    url, bridge = live
    assert httpx.get(f"{url}/healthz").status_code == 200
    r = httpx.post(url + "/minio/events", content=EVENT, headers=signed_headers(EVENT, SECRET))
    assert r.status_code == 202 and r.json() == {"status": "accepted"}
    assert httpx.post(url, content=EVENT).status_code == 401
    big = b"x" * (1024 * 1024 + 1)
    assert httpx.post(url, content=big, headers=signed_headers(big, SECRET)).status_code == 413
    bridge.action = "retry"
    r = httpx.post(url, content=EVENT, headers=signed_headers(EVENT, SECRET))
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert len(bridge.deliveries) == 2
