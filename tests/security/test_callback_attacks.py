"""Issue 14, "SSRF through callback_url": each way in, replayed against earshot.callbacks.

Before: any http(s) host was called, loopback and metadata included, up to 8 times, and the
first 200 characters of the answer were stored.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import pytest

from earshot.callbacks.models import CallbackDelivery
from earshot.callbacks.outbox import callback_client, deliver, record_callback
from earshot.callbacks.ssrf import CallbackRefused, PinnedTransport, check_callback_url
from earshot.config import Settings
from earshot.db import models as m
from earshot.db.base import new_id
from earshot.db.session import session_scope

SECRET = "callback-secret-0123456789"


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{"callback_secret": SECRET, **overrides})  # type: ignore[call-arg, arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/done",  # https only unless configured
        "https://127.0.0.1/x", "https://2130706433/x", "https://0177.0.0.1/x", "https://0x7f.1/x",
        "https://127.1/x", "https://[::1]/x", "https://[::ffff:127.0.0.1]/x", "https://localhost/x",
        "https://api.localhost/x", "https://0.0.0.0/x",
        "https://169.254.169.254/latest/meta-data/", "https://2852039166/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/x", "https://[fe80::1%25eth0]/x",
        "https://10.0.0.5/x", "https://192.168.1.1/x", "https://172.16.0.1/x", "https://100.64.0.1/x",
        "https://224.0.0.1/x", "https://[ff02::1]/x", "https://[2002:7f00:1::]/x", "https://[64:ff9b::7f00:1]/x",
        "https://user:pass@hooks.example.com/x",
        "file:///etc/passwd", "gopher://hooks.example.com/x",
    ],
)
def test_callback_urls_into_the_cluster_are_refused(url: str) -> None:
    with pytest.raises(CallbackRefused):
        check_callback_url(url, settings=settings())


def test_public_https_callbacks_pass_and_the_host_allow_list_narrows_them() -> None:
    assert check_callback_url("https://hooks.example.com/done", settings=settings())
    narrowed = settings(callback_allowed_hosts=["*.partner.example"])
    assert check_callback_url("https://a.partner.example/done", settings=narrowed)
    with pytest.raises(CallbackRefused):
        check_callback_url("https://hooks.example.com/done", settings=narrowed)


def test_dns_rebinding_is_caught_at_connect_time() -> None:
    """The name passes the check (no DNS then); at connect time it resolves to loopback."""
    url = "https://rebind.example.com/done"
    assert check_callback_url(url, settings=settings())
    answers = iter([
        [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 443))],
        [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
         (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 443))],
    ])
    client = httpx.Client(transport=PinnedTransport(settings(), resolver=lambda *a, **k: next(answers)))
    for _ in range(2):  # loopback; then a public address with a metadata one among them
        with pytest.raises(CallbackRefused):
            client.post(url, content=b"{}")


class _Receiver(BaseHTTPRequestHandler):
    hits: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.hits.append((self.path, self.headers.get("Host", "")))
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/internal-only")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"SECRET-ANSWER-FROM-INSIDE " * 20
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[int]:
    _Receiver.hits = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


# the test receiver is on loopback: these settings lift only the address checks
LOCAL = {"callback_allow_http": True, "callback_allow_private": True}


def test_redirects_are_not_followed(receiver: int) -> None:
    with callback_client(settings(**LOCAL)) as client:
        response = client.post(f"http://127.0.0.1:{receiver}/redirect", content=b"{}")
    assert response.status_code == 302
    assert [path for path, _ in _Receiver.hits] == ["/redirect"]


def test_connection_goes_to_the_checked_address_with_the_name_kept(receiver: int) -> None:
    resolved = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", receiver))]
    client = httpx.Client(transport=PinnedTransport(settings(**LOCAL), resolver=lambda *a, **k: resolved))
    assert client.post(f"http://hooks.test:{receiver}/pinned", content=b"{}").status_code == 500
    assert _Receiver.hits == [("/pinned", f"hooks.test:{receiver}")]


def _job_with_callback(url: str, database_url: str) -> str:
    with session_scope(database_url) as s:
        audio = m.AudioFile(uri="s3://b/k.wav", bucket="b", key="k.wav", version=new_id())
        s.add(audio)
        s.flush()
        job = m.Job(audio_file_id=audio.id, source_uri=audio.uri, engine="local", tasks=["transcribe"],
                    idempotency_key=new_id(), status="succeeded", callback_url=url)
        s.add(job)
        s.flush()
        row = record_callback(s, job, settings=None)
        assert row is not None
        return row.id


def test_only_the_status_code_of_an_answer_is_stored(receiver: int, pg_url: str) -> None:
    s = settings(database_url=pg_url, **LOCAL)
    delivery = _job_with_callback(f"http://127.0.0.1:{receiver}/answer", pg_url)
    attempt = deliver(delivery, s)
    assert not attempt.delivered and attempt.status_code == 500
    with session_scope(pg_url) as db:
        row = db.get(CallbackDelivery, delivery)
        assert row is not None and row.last_status_code == 500
        stored = " ".join(str(getattr(row, c.key)) for c in CallbackDelivery.__table__.columns)
    assert "SECRET-ANSWER" not in stored


def test_a_metadata_callback_is_never_sent_and_given_up_at_once(pg_url: str) -> None:
    delivery = _job_with_callback("https://169.254.169.254/latest/meta-data/", pg_url)
    attempt = deliver(delivery, settings(database_url=pg_url))
    assert not attempt.delivered and attempt.retry_in_s is None and attempt.status_code is None
    assert attempt.error and attempt.error.startswith("refused")


def test_unsigned_callbacks_are_not_sent(receiver: int, pg_url: str) -> None:
    delivery = _job_with_callback(f"http://127.0.0.1:{receiver}/unsigned", pg_url)
    attempt = deliver(delivery, settings(database_url=pg_url, callback_secret=None, **LOCAL))
    assert not attempt.delivered and _Receiver.hits == []
