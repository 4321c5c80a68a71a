"""Webhook source: authentication (secret, HMAC, SNS signature), SNS confirmation, HTTP codes."""

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
from earshot.callbacks.signing import sign
from earshot.ingest.webhook import SnsVerifier, WebhookServer, parse_webhook_url

SECRET = "hook-secret"
CERT_URL = "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem"
TOPIC = "arn:aws:sns:us-east-1:123456789012:uploads"


class FakeBridge:
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
    doc: dict[str, Any] = {
        "Type": kind, "MessageId": "mid-1", "TopicArn": TOPIC, "Timestamp": "2026-11-26T10:00:00.000Z",
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
    return Settings(_env_file=None, **overrides)  # type: ignore[call-arg]


def server(s: Settings, bridge: FakeBridge, pem: bytes | None = None, confirmed: list[str] | None = None) -> WebhookServer:
    def confirm(url: str) -> int:
        if confirmed is not None:
            confirmed.append(url)
        return 200

    return WebhookServer(
        "127.0.0.1", 0, cast(Bridge, bridge), s,
        sns_verifier=SnsVerifier(fetch=lambda url: pem or b""), confirm=confirm,
    )


EVENT = json.dumps({"Records": []}).encode()


def test_parse_url() -> None:
    assert parse_webhook_url("webhook://0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_webhook_url("webhook://127.0.0.1") == ("127.0.0.1", 8080)
    with pytest.raises(ValueError):
        parse_webhook_url("http://x:1")


@pytest.mark.parametrize(
    ("headers", "path", "ok"),
    [
        ({"Authorization": f"Bearer {SECRET}"}, "/", True),
        ({"Authorization": SECRET}, "/", True),
        ({"Authorization": "Basic " + base64.b64encode(f"earshot:{SECRET}".encode()).decode()}, "/", True),
        ({}, f"/events?token={SECRET}", True),
        ({"X-Earshot-Signature": sign(EVENT, SECRET)}, "/", True),
        ({"X-Earshot-Signature": sign(EVENT + b" ", SECRET)}, "/", False),
        ({"Authorization": "Bearer wrong"}, "/", False),
        ({}, "/?token=wrong", False),
        ({}, "/", False),
    ],
)
def test_shared_secret(headers: dict[str, str], path: str, ok: bool) -> None:
    bridge = FakeBridge()
    srv = server(settings(ingest_webhook_secret=SECRET), bridge)
    try:
        code, _ = srv.handle(EVENT, headers, path)
    finally:
        srv.httpd.server_close()
    assert (code == 200) is ok
    assert len(bridge.deliveries) == (1 if ok else 0)  # refused requests never reach the bridge


def test_sns_signature(signer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signer
    verifier = SnsVerifier(fetch=lambda url: pem)
    doc = sns_message(key)
    assert verifier.verify(doc)
    assert not verifier.verify({**doc, "Message": "tampered"})
    assert not verifier.verify({**doc, "SigningCertURL": "https://evil.example.com/cert.pem"})
    assert not verifier.verify({**doc, "SigningCertURL": CERT_URL.replace("https", "http")})
    assert not verifier.verify({**doc, "SignatureVersion": "3"})
    assert not verifier.verify({**doc, "Signature": "!!"})


def test_sns_notification_needs_signature_and_allowed_topic(signer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signer
    body = json.dumps(sns_message(key)).encode()
    headers = {"x-amz-sns-message-type": "Notification", "x-amz-sns-message-id": "mid-1"}
    bridge = FakeBridge()
    srv = server(settings(ingest_sns_topic_arns=[TOPIC]), bridge, pem)
    other = server(settings(ingest_sns_topic_arns=["arn:aws:sns:us-east-1:1:other"]), FakeBridge(), pem)
    try:
        assert srv.handle(body, headers, "/")[0] == 200
        assert bridge.deliveries[0].message_id == "mid-1"
        bad = json.dumps({**json.loads(body), "Message": "x"}).encode()
        assert srv.handle(bad, headers, "/")[0] == 401
        assert other.handle(body, headers, "/")[0] == 401
    finally:
        srv.httpd.server_close()
        other.httpd.server_close()


def test_sns_subscription_confirmation(signer: tuple[rsa.RSAPrivateKey, bytes]) -> None:
    key, pem = signer
    confirmed: list[str] = []
    bridge = FakeBridge()
    srv = server(settings(), bridge, pem, confirmed)
    headers = {"x-amz-sns-message-type": "SubscriptionConfirmation"}
    try:
        doc = sns_message(key, "SubscriptionConfirmation")
        assert srv.handle(json.dumps(doc).encode(), headers, "/")[0] == 200
        assert confirmed == [doc["SubscribeURL"]]
        # signed, but pointing somewhere that is not SNS: refused (no SSRF)
        evil = sns_message(key, "SubscriptionConfirmation", SubscribeURL="https://evil.example.com/x")
        assert srv.handle(json.dumps(evil).encode(), headers, "/")[0] == 400
        assert len(confirmed) == 1 and bridge.deliveries == []
    finally:
        srv.httpd.server_close()


@pytest.fixture
def live() -> Iterator[tuple[str, FakeBridge]]:
    bridge = FakeBridge()
    srv = server(settings(ingest_webhook_secret=SECRET), bridge)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.port}", bridge
    finally:
        srv.shutdown()


def test_http_roundtrip(live: tuple[str, FakeBridge]) -> None:
    url, bridge = live
    auth = {"Authorization": f"Bearer {SECRET}"}
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/metrics").status_code == 200
    r = httpx.post(url, content=EVENT, headers=auth)
    assert r.status_code == 200 and r.json()["action"] == "ack"
    assert httpx.post(url, content=EVENT).status_code == 401
    assert httpx.post(url, content=b"x" * (1024 * 1024 + 1), headers=auth).status_code == 413
    bridge.action = "retry"
    r = httpx.post(url, content=EVENT, headers=auth)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert len(bridge.deliveries) == 2
