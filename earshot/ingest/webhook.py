"""The push source: an HTTP endpoint for MinIO's webhook target and SNS HTTP(S) subscriptions.

``earshot ingest run --source webhook://0.0.0.0:8080`` serves:

- ``POST /`` (any path): one event message. The response is sent after the bridge is done,
  so the sender's retry is the redelivery: ``200`` (jobs enqueued, records ignored or
  dead-lettered), ``401`` (not authenticated; nothing stored), ``413`` (too large),
  ``503`` (transient trouble; please retry).
- ``GET /healthz`` and ``GET /metrics`` (Prometheus).

Authentication, when ``EARSHOT_INGEST_WEBHOOK_SECRET`` is set, accepts any of:
``Authorization: Bearer SECRET`` (MinIO's ``auth_token``), ``Authorization: SECRET``,
HTTP Basic auth with SECRET as the password (``https://earshot:SECRET@host/`` in an SNS
subscription), ``?token=SECRET``, or ``X-Earshot-Signature: sha256=HMAC_SHA256(SECRET, body)``.

SNS messages (``x-amz-sns-message-type``) are also accepted on their own signature when
``EARSHOT_INGEST_SNS_VERIFY`` is on: the signing certificate must come over https from
``sns.<region>.amazonaws.com``, and the topic must be in ``EARSHOT_INGEST_SNS_TOPIC_ARNS``
when that list is set. A ``SubscriptionConfirmation`` is confirmed by fetching its
``SubscribeURL``. Without a secret and without SNS verification the endpoint is open
(development only; a warning is logged at start-up).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from earshot.callbacks.signing import SIGNATURE_HEADER
from earshot.callbacks.signing import sign as hmac_signature
from earshot.config import Settings
from earshot.ingest.bridge import Bridge, Delivery
from earshot.ingest.events import MAX_BODY_BYTES

__all__ = ["SnsVerifier", "WebhookServer", "hmac_signature", "parse_webhook_url"]

log = logging.getLogger("earshot.ingest")

_SNS_CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ),
}


def parse_webhook_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "webhook":
        raise ValueError(f"{url!r}: expected webhook://HOST:PORT")
    return parts.hostname or "0.0.0.0", parts.port or 8080


class SnsVerifier:
    """Checks an SNS message's RSA signature against its (AWS-hosted) signing certificate."""

    def __init__(self, fetch: Callable[[str], bytes] | None = None) -> None:
        self._fetch = fetch or self._download
        self._certs: dict[str, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _download(url: str) -> bytes:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        return response.content

    @staticmethod
    def cert_url_ok(url: str) -> bool:
        parts = urlsplit(url)
        return parts.scheme == "https" and bool(_SNS_CERT_HOST.match(parts.hostname or "")) and parts.path.endswith(".pem")

    @staticmethod
    def string_to_sign(doc: Mapping[str, Any]) -> bytes | None:
        fields = _SNS_FIELDS.get(str(doc.get("Type")))
        if fields is None:
            return None
        lines: list[str] = []
        for name in fields:
            if name in doc and doc[name] is not None:
                lines += [name, str(doc[name])]
        return ("\n".join(lines) + "\n").encode("utf-8")

    def verify(self, doc: Mapping[str, Any]) -> bool:
        from cryptography import x509
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        url = str(doc.get("SigningCertURL") or doc.get("SigningCertUrl") or "")
        data = self.string_to_sign(doc)
        if data is None or not self.cert_url_ok(url):
            return False
        try:
            signature = base64.b64decode(str(doc.get("Signature", "")), validate=True)
        except (binascii.Error, ValueError):
            return False
        algorithm = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(str(doc.get("SignatureVersion")))
        if algorithm is None:
            return False
        with self._lock:
            key = self._certs.get(url)
        if key is None:
            try:
                key = x509.load_pem_x509_certificate(self._fetch(url)).public_key()
            except Exception as exc:
                log.warning("cannot load SNS signing certificate %s: %s", url, exc)
                return False
            with self._lock:
                self._certs[url] = key
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        try:
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            return False
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook %s " + format, self.client_address[0], *args)

    def _send(self, code: int, payload: object, content_type: str = "application/json") -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if code == 503:
            self.send_header("Retry-After", "5")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/healthz", "/readyz"):
            self._send(200, {"status": "ok"})
        elif path == "/metrics":
            self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
        else:
            self._send(404, {"error": "not found"})

    def do_HEAD(self) -> None:  # MinIO probes its webhook target
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        length = self.headers.get("Content-Length")
        if length is None:
            self._send(411, {"error": "Content-Length required"})
            return
        try:
            size = int(length)
        except ValueError:
            self._send(400, {"error": "bad Content-Length"})
            return
        if size > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(size)
        code, payload = self.server.app.handle(body, dict(self.headers.items()), self.path)
        self._send(code, payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: WebhookServer


class WebhookServer:
    """The webhook source. ``serve_forever()`` blocks; ``shutdown()`` from another thread."""

    def __init__(
        self,
        host: str,
        port: int,
        bridge: Bridge,
        settings: Settings,
        *,
        sns_verifier: SnsVerifier | None = None,
        confirm: Callable[[str], int] | None = None,
    ) -> None:
        self.bridge = bridge
        self.settings = settings
        self.sns = sns_verifier or SnsVerifier()
        self._confirm = confirm or self._get
        self.httpd = _Server((host, port), _Handler)
        self.httpd.app = self
        if not settings.ingest_webhook_secret:
            log.warning(
                "EARSHOT_INGEST_WEBHOOK_SECRET is not set: the webhook accepts %s",
                "only verified SNS messages and anything else unauthenticated"
                if settings.ingest_sns_verify
                else "any request",
            )

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.5)

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _get(url: str) -> int:
        return httpx.get(url, timeout=15).status_code

    # ---------------------------------------------------------------- auth

    def _secret_ok(self, headers: Mapping[str, str], query: Mapping[str, list[str]], body: bytes) -> bool:
        secret = self.settings.ingest_webhook_secret
        if not secret:
            return False
        lower = {k.lower(): v for k, v in headers.items()}
        candidates: list[str] = list(query.get("token", []))
        auth = lower.get("authorization", "").strip()
        if auth.lower().startswith("bearer "):
            candidates.append(auth[7:].strip())
        elif auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode("utf-8")
                candidates.append(decoded.partition(":")[2])
            except (binascii.Error, UnicodeDecodeError):
                pass
        elif auth:
            candidates.append(auth)
        if any(hmac.compare_digest(c.encode(), secret.encode()) for c in candidates):
            return True
        signature = lower.get(SIGNATURE_HEADER.lower())
        if not signature:
            return False
        return hmac.compare_digest(signature.encode(), hmac_signature(body, secret).encode())

    def _sns_ok(self, doc: Mapping[str, Any]) -> bool:
        if not self.settings.ingest_sns_verify:
            return False
        topics = self.settings.ingest_sns_topic_arns
        if topics and doc.get("TopicArn") not in topics:
            log.warning("SNS message from topic %s, which is not allowed", doc.get("TopicArn"))
            return False
        return self.sns.verify(doc)

    # ---------------------------------------------------------------- requests

    def handle(self, body: bytes, headers: Mapping[str, str], path: str) -> tuple[int, object]:
        query = parse_qs(urlsplit(path).query)
        lower = {k.lower(): v for k, v in headers.items()}
        sns_type = lower.get("x-amz-sns-message-type")
        sns_doc: dict[str, Any] | None = None
        if sns_type:
            try:
                loaded = json.loads(body)
                sns_doc = loaded if isinstance(loaded, dict) else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                sns_doc = None
        if self._secret_ok(headers, query, body):
            via = "secret"
        elif sns_doc is not None and self._sns_ok(sns_doc):
            via = "sns"
        elif not self.settings.ingest_webhook_secret and not (sns_type and self.settings.ingest_sns_verify):
            via = "open"
        else:
            log.warning("webhook request refused: not authenticated (%s)", "SNS" if sns_type else "plain")
            return 401, {"error": "not authenticated"}

        if sns_doc is not None and sns_doc.get("Type") == "SubscriptionConfirmation":
            return self._confirm_subscription(sns_doc, via)
        if sns_doc is not None and sns_doc.get("Type") == "UnsubscribeConfirmation":
            log.warning("SNS unsubscribed this endpoint from %s", sns_doc.get("TopicArn"))
            return 200, {"status": "unsubscribed"}

        message_id = lower.get("x-amz-sns-message-id")
        outcome = self.bridge.handle(Delivery(body=body, source="webhook", message_id=message_id))
        if outcome.action == "retry":
            return 503, outcome.as_dict()
        return 200, outcome.as_dict()

    def _confirm_subscription(self, doc: Mapping[str, Any], via: str) -> tuple[int, object]:
        url = str(doc.get("SubscribeURL") or "")
        parts = urlsplit(url)
        # A signature-verified message came from AWS; with the shared secret the sender is
        # trusted. Either way only http(s) URLs are fetched.
        if parts.scheme not in ("http", "https") or (
            via == "sns" and not _SNS_CERT_HOST.match(parts.hostname or "")
        ) or via == "open":
            log.warning("not confirming SNS subscription to %s (URL %s)", doc.get("TopicArn"), url)
            return 400, {"error": "SubscribeURL refused"}
        try:
            status = self._confirm(url)
        except httpx.HTTPError as exc:
            log.warning("SNS subscription confirmation failed: %s", exc)
            return 502, {"error": f"confirmation failed: {exc}"}
        if status >= 300:
            return 502, {"error": f"confirmation returned HTTP {status}"}
        log.info("confirmed SNS subscription to %s", doc.get("TopicArn"))
        return 200, {"status": "subscribed", "topic": doc.get("TopicArn")}
