"""The push source: an HTTP endpoint for signed S3 event posts and SNS HTTP(S) subscriptions.

``earshot ingest run --source webhook://127.0.0.1:8080`` serves (starlette on uvicorn):

- ``POST /`` (any path): one event message. The answer comes after the bridge is done, so the
  sender's retry is the redelivery: ``202`` (handled: jobs enqueued, records ignored or
  dead-lettered -- the answer says nothing more, so it cannot tell anyone which objects exist or
  which jobs they made), ``401`` (not authenticated; nothing stored), ``411``/``413``/``408``
  (no length / too large / body too slow), ``503`` (transient trouble; retry).
- ``GET /healthz``.

It fails closed (:func:`check_webhook_settings`, at start-up): it refuses to start without a
secret of at least 16 characters or an SNS topic allow-list, and without a bucket allow-list.
A request is accepted when either

- it carries ``X-Earshot-Timestamp: <unix seconds>`` within ``EARSHOT_INGEST_WEBHOOK_MAX_SKEW_S``
  of now and ``X-Earshot-Signature: sha256=HMAC_SHA256(secret, "<timestamp>." + raw body)``
  (:func:`signed_headers` makes them), or
- it is an SNS message (``x-amz-sns-message-type``) from a topic in
  ``EARSHOT_INGEST_SNS_TOPIC_ARNS``, signed by AWS (the certificate must come over https from
  ``sns.<region>.amazonaws.com``) and not older than ``EARSHOT_INGEST_SNS_MAX_AGE_S``.

A ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL`` only when it is a
verified SNS message and the URL is https on the SNS host. Bodies are read with a size cap
(``MAX_BODY_BYTES``) and a deadline; uvicorn closes connections that do not finish their headers
in time (see earshot/listeners.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from earshot.callbacks.signing import SIGNATURE_HEADER
from earshot.callbacks.signing import sign as hmac_signature
from earshot.config import Settings
from earshot.errors import ConfigError
from earshot.ingest.bridge import Bridge, Delivery
from earshot.ingest.events import MAX_BODY_BYTES, sns_fresh
from earshot.listeners import ListenerLimits, make_server

__all__ = [
    "MIN_SECRET_CHARS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SnsVerifier",
    "WebhookServer",
    "check_webhook_settings",
    "parse_webhook_url",
    "signed_headers",
]

log = logging.getLogger("earshot.ingest")

TIMESTAMP_HEADER = "X-Earshot-Timestamp"
MIN_SECRET_CHARS = 16
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
    """``webhook://HOST:PORT``; the host defaults to 127.0.0.1 (listeners are local unless told)."""
    parts = urlsplit(url)
    if parts.scheme != "webhook":
        raise ValueError(f"{url!r}: expected webhook://HOST:PORT")
    return parts.hostname or "127.0.0.1", parts.port or 8080


def _signed_payload(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode("ascii") + b"." + body


def signed_headers(body: bytes, secret: str, *, now: float | None = None) -> dict[str, str]:
    """The headers a sender adds to ``body`` (what a MinIO/Lambda relay or a test does)."""
    timestamp = str(int(time.time() if now is None else now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: hmac_signature(_signed_payload(timestamp, body), secret),
    }


def check_webhook_settings(settings: Settings) -> None:
    """Refuse to serve an open webhook: the ways in must be locked, and the buckets named."""
    secret = settings.ingest_webhook_secret or ""
    topics = list(settings.ingest_sns_topic_arns)
    problems: list[str] = []
    if secret and len(secret) < MIN_SECRET_CHARS:
        problems.append(f"EARSHOT_INGEST_WEBHOOK_SECRET is shorter than {MIN_SECRET_CHARS} characters")
    if not secret and not topics:
        problems.append(
            "neither EARSHOT_INGEST_WEBHOOK_SECRET (signed requests) nor "
            "EARSHOT_INGEST_SNS_TOPIC_ARNS (signed SNS messages from these topics) is set"
        )
    if topics and not settings.ingest_sns_verify and not secret:
        problems.append("EARSHOT_INGEST_SNS_VERIFY is off, so SNS messages cannot be trusted")
    if not settings.ingest_buckets:
        problems.append("EARSHOT_INGEST_BUCKETS (the buckets this webhook may start jobs for) is empty")
    if problems:
        raise ConfigError(
            "the ingest webhook refuses to start: " + "; ".join(problems) + " (docs/security.md)",
            code="webhook_not_configured",
        )


class SnsVerifier:
    """Checks an SNS message's RSA signature against its (AWS-hosted) signing certificate."""

    def __init__(self, fetch: Callable[[str], bytes] | None = None) -> None:
        self._fetch = fetch or self._download
        self._certs: dict[str, Any] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _download(url: str) -> bytes:
        response = httpx.get(url, timeout=10, follow_redirects=False)
        response.raise_for_status()
        if len(response.content) > 64 * 1024:
            raise ValueError("certificate too large")
        return response.content

    @staticmethod
    def cert_url_ok(url: str) -> bool:
        parts = urlsplit(url)
        return (
            parts.scheme == "https"
            and bool(_SNS_CERT_HOST.match(parts.hostname or ""))
            and parts.port in (None, 443)
            and parts.path.endswith(".pem")
        )

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


_ACCEPTED = {"status": "accepted"}
_UNAUTHENTICATED = {"error": "not authenticated"}


class WebhookServer:
    """The webhook source. ``serve_forever()`` blocks; ``shutdown()`` from another thread.

    The listening socket is bound in the constructor, so a bad address fails at once and
    ``port`` is known (port 0 picks a free one).
    """

    def __init__(
        self,
        host: str,
        port: int,
        bridge: Bridge,
        settings: Settings,
        *,
        sns_verifier: SnsVerifier | None = None,
        confirm: Callable[[str], int] | None = None,
        limits: ListenerLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_webhook_settings(settings)
        self.bridge = bridge
        self.settings = settings
        self.sns = sns_verifier or SnsVerifier()
        self._confirm = confirm or self._get
        self._clock = clock
        self.limits = limits or ListenerLimits()
        self.app = Starlette(
            routes=[
                Route("/healthz", self._health, methods=["GET"]),
                Route("/readyz", self._health, methods=["GET"]),
                Route("/{path:path}", self._post, methods=["POST"]),
            ]
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._server = make_server(self.app, self.limits, log_prefix="webhook")
        self._serving, self._stopped = threading.Event(), threading.Event()

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def serve_forever(self) -> None:
        self._serving.set()
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._server.should_exit = True
        if self._serving.is_set():
            self._stopped.wait(10)
        self._socket.close()

    @staticmethod
    def _get(url: str) -> int:
        return httpx.get(url, timeout=15, follow_redirects=False).status_code

    # ---------------------------------------------------------------- HTTP

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _read_body(self, request: Request) -> bytes | Response:
        declared = request.headers.get("content-length")
        if declared is None:
            return JSONResponse({"error": "Content-Length required"}, status_code=411)
        if not declared.isdigit():
            return JSONResponse({"error": "bad Content-Length"}, status_code=400)
        if int(declared) > MAX_BODY_BYTES:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413,
                                headers={"Connection": "close"})
        body = bytearray()

        async def read() -> None:
            async for chunk in request.stream():
                body.extend(chunk)
                if len(body) > MAX_BODY_BYTES:
                    raise OverflowError

        try:
            await asyncio.wait_for(read(), timeout=self.limits.body_timeout_s or self.limits.body_idle_timeout_s)
        except TimeoutError:
            return JSONResponse({"error": "body not received in time"}, status_code=408,
                                headers={"Connection": "close"})
        except OverflowError:
            return JSONResponse({"error": f"body over {MAX_BODY_BYTES} bytes"}, status_code=413,
                                headers={"Connection": "close"})
        except ClientDisconnect:
            return Response(status_code=400)
        return bytes(body)

    async def _post(self, request: Request) -> Response:
        body = await self._read_body(request)
        if isinstance(body, Response):
            return body
        code, payload = await run_in_threadpool(self.handle, body, dict(request.headers))
        headers = {"Retry-After": "5"} if code == 503 else None
        return JSONResponse(payload, status_code=code, headers=headers)

    # ---------------------------------------------------------------- auth

    def _hmac_ok(self, headers: Mapping[str, str], body: bytes) -> bool:
        secret = self.settings.ingest_webhook_secret
        signature = headers.get(SIGNATURE_HEADER.lower())
        timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
        if not secret or not signature or not timestamp.isdigit() or len(timestamp) > 12:
            return False
        if abs(self._clock() - int(timestamp)) > self.settings.ingest_webhook_max_skew_s:
            log.warning("webhook request refused: timestamp %s outside the allowed window", timestamp)
            return False
        expected = hmac_signature(_signed_payload(timestamp, body), secret)
        return hmac.compare_digest(signature.encode(), expected.encode())

    def _sns_ok(self, doc: Mapping[str, Any]) -> bool:
        topics = self.settings.ingest_sns_topic_arns
        if not self.settings.ingest_sns_verify or not topics:
            return False
        if doc.get("TopicArn") not in topics:
            log.warning("SNS message from topic %s, which is not allowed", doc.get("TopicArn"))
            return False
        if not sns_fresh(
            doc,
            now=datetime.fromtimestamp(self._clock(), UTC),
            max_age_s=self.settings.ingest_sns_max_age_s,
            max_skew_s=self.settings.ingest_webhook_max_skew_s,
        ):
            log.warning("SNS message %s refused: Timestamp %s is stale or in the future",
                        doc.get("MessageId"), doc.get("Timestamp"))
            return False
        return self.sns.verify(doc)

    # ---------------------------------------------------------------- requests

    def handle(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, str]]:
        """(status, payload) for one request; runs in a worker thread (the bridge blocks)."""
        lower = {k.lower(): v for k, v in headers.items()}
        sns_doc: dict[str, Any] | None = None
        if lower.get("x-amz-sns-message-type"):
            try:
                loaded = json.loads(body)
                sns_doc = loaded if isinstance(loaded, dict) else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                sns_doc = None
        if self._hmac_ok(lower, body):
            via = "hmac"
        elif sns_doc is not None and self._sns_ok(sns_doc):
            via = "sns"
        else:
            log.warning("webhook request refused: not authenticated (%s)", "SNS" if sns_doc else "plain")
            return 401, _UNAUTHENTICATED

        if sns_doc is not None and sns_doc.get("Type") == "SubscriptionConfirmation":
            return self._confirm_subscription(sns_doc, via)
        if sns_doc is not None and sns_doc.get("Type") == "UnsubscribeConfirmation":
            log.warning("SNS unsubscribed this endpoint from %s", sns_doc.get("TopicArn"))
            return 202, _ACCEPTED

        message_id = lower.get("x-amz-sns-message-id")
        outcome = self.bridge.handle(Delivery(body=body, source="webhook", message_id=message_id))
        if outcome.action == "retry":
            return 503, {"status": "retry"}
        # what the records became stays in the logs and the dead-letter table, not in the answer
        log.info("webhook message: %d job(s), %d skipped, %d dead letter(s)",
                 len(outcome.jobs), len(outcome.skipped), len(outcome.dead_letters))
        return 202, _ACCEPTED

    def _confirm_subscription(self, doc: Mapping[str, Any], via: str) -> tuple[int, dict[str, str]]:
        url = str(doc.get("SubscribeURL") or "")
        parts = urlsplit(url)
        # Only AWS-signed confirmations, and only to the SNS host: a signed-request holder must
        # not make the webhook fetch an address of their choosing.
        if via != "sns" or parts.scheme != "https" or not _SNS_CERT_HOST.match(parts.hostname or ""):
            log.warning("not confirming SNS subscription to %s (URL %s)", doc.get("TopicArn"), url)
            return 400, {"error": "SubscribeURL refused"}
        try:
            status = self._confirm(url)
        except httpx.HTTPError as exc:
            log.warning("SNS subscription confirmation failed: %s", exc)
            return 502, {"error": "confirmation failed"}
        if status >= 300:
            return 502, {"error": "confirmation failed"}
        log.info("confirmed SNS subscription to %s", doc.get("TopicArn"))
        return 202, _ACCEPTED
