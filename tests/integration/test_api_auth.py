"""Every endpoint with no key, a bad key, the wrong scope and the right scope; revocation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from earshot.auth import create_key, revoke_key
from earshot.db.session import session_scope
from tests.fixtures.api import QueueRecorder, Tokens, bearer

PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # {job} / {failed} / {queued} / {key} are filled per test
    scope: str
    ok: int
    body: str = ""  # "upload", "key" or ""


ENDPOINTS = [
    Endpoint("GET", "/v1/jobs", "read", 200),
    Endpoint("POST", "/v1/jobs", "submit", 201, body="upload"),
    Endpoint("GET", "/v1/jobs/{job}", "read", 200),
    Endpoint("POST", "/v1/jobs/{failed}/retry", "submit", 200),
    Endpoint("POST", "/v1/jobs/{queued}/cancel", "submit", 200),
    Endpoint("GET", "/v1/jobs/{job}/transcript", "read", 200),
    Endpoint("GET", "/v1/jobs/{job}/transcript?format=srt", "read", 200),
    Endpoint("GET", "/v1/jobs/{job}/summary", "read", 200),
    Endpoint("GET", "/v1/jobs/{job}/events", "read", 200),
    Endpoint("GET", "/v1/jobs/{job}/reasoning", "read", 200),
    Endpoint("GET", "/v1/jobs/{job}/speech", "read", 200),
    Endpoint("GET", "/v1/search?q=lighthouse", "read", 200),
    Endpoint("GET", "/v1/keys", "admin", 200),
    Endpoint("POST", "/v1/keys", "admin", 201, body="key"),
    Endpoint("POST", "/v1/keys/{key}/revoke", "admin", 200),
]
WRONG = {"read": "submit", "submit": "read", "admin": "read_submit"}


def _call(client: TestClient, ep: Endpoint, ids: dict[str, str], headers: dict[str, str]) -> Any:
    path = ep.path.format(**ids)
    kwargs: dict[str, Any] = {"headers": headers}
    if ep.body == "upload":
        kwargs["files"] = {"file": ("call.wav", b"RIFF....WAVEfmt ", "audio/wav")}
        kwargs["data"] = {"tasks": "transcribe"}
    elif ep.body == "key":
        kwargs["json"] = {"name": "made-by-test", "scopes": ["read"]}
    return client.request(ep.method, path, **kwargs)


def _ids(seeded: Callable[..., str], tmp_path: Any) -> dict[str, str]:
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF0000WAVE")
    with session_scope() as s:
        key, _ = create_key(s, name="to-revoke", scopes=["read"])
        key_id = key.id
    return {
        "job": seeded(utterances=[(0.0, 2.0, "a lighthouse keeper")], speech_uri=wav.as_uri()),
        "failed": seeded(status="failed", error=("engine_error", "boom")),
        "queued": seeded(status="queued"),
        "key": key_id,
    }


@pytest.mark.parametrize("ep", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_each_endpoint_refuses_missing_bad_and_wrong_scope_keys(
    ep: Endpoint, api_client: TestClient, api_tokens: Tokens, seeded: Callable[..., str], tmp_path: Any
) -> None:
    ids = _ids(seeded, tmp_path)

    missing = _call(api_client, ep, ids, {})
    assert missing.status_code == 401, missing.text
    assert missing.headers["content-type"].startswith(PROBLEM)
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert missing.json()["code"] == "unauthenticated"

    for bad in ("Bearer ek_not-a-real-key", "Basic dXNlcjpwYXNz", "Bearer "):
        r = _call(api_client, ep, ids, {"Authorization": bad})
        assert r.status_code == 401, (bad, r.text)

    wrong = _call(api_client, ep, ids, bearer(getattr(api_tokens, WRONG[ep.scope])))
    assert wrong.status_code == 403, wrong.text
    assert wrong.headers["content-type"].startswith(PROBLEM)
    assert wrong.json() | {"detail": ""} == {
        "type": "urn:earshot:problem:insufficient_scope",
        "title": "Forbidden",
        "status": 403,
        "detail": "",
        "instance": ep.path.split("?")[0].format(**ids),
        "code": "insufficient_scope",
    }

    right = _call(api_client, ep, ids, bearer(api_tokens.for_scope(ep.scope)))
    assert right.status_code == ep.ok, right.text

    # admin implies every scope (a second upload is a new job; the other calls repeat safely)
    if ep.scope != "admin":
        ids = _ids(seeded, tmp_path)
        admin = _call(api_client, ep, ids, bearer(api_tokens.admin))
        assert admin.status_code == ep.ok, admin.text


def test_health_and_metrics_need_no_key(api_client: TestClient) -> None:
    assert api_client.get("/healthz").json() == {"status": "ok"}
    assert api_client.get("/readyz").json() == {"status": "ok", "database": "ok"}
    api_client.get("/v1/jobs")  # a 401, counted under its route template
    text = api_client.get("/metrics").text
    assert 'earshot_api_requests_total{method="GET",route="/v1/jobs",status="401"}' in text
    assert "earshot_api_request_duration_seconds_bucket" in text
    assert api_client.get("/openapi.json").status_code == 200


def test_readyz_reports_an_unreachable_database(api_env: Any, api_queue: QueueRecorder) -> None:
    from tests.fixtures.api import make_app

    broken = api_env.model_copy(update={"database_url": "postgresql+psycopg://postgres@127.0.0.1:1/none"})
    with TestClient(make_app(broken, api_queue)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    assert r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["code"] == "not_ready"


def test_revoked_key_stops_working_within_cache_window(api_env: Any, api_queue: QueueRecorder) -> None:
    """Keys are cached per process for ``api_key_cache_s``: a key revoked elsewhere (here: the
    CLI's function on the database) keeps working at most that long, then answers 401."""
    from tests.fixtures.api import make_app

    window = 2.0
    settings = api_env.model_copy(update={"api_key_cache_s": window})
    with session_scope() as s:
        key, token = create_key(s, name="short-lived", scopes=["read"])
        key_id = key.id
    with TestClient(make_app(settings, api_queue)) as client:
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
        cached_at = time.monotonic()
        with session_scope() as s:
            revoke_key(s, key_id)
        still = client.get("/v1/jobs", headers=bearer(token))
        if time.monotonic() - cached_at < window * 0.9:
            assert still.status_code == 200  # served from the cache, as documented
        time.sleep(max(0.0, cached_at + window + 0.2 - time.monotonic()))
        r = client.get("/v1/jobs", headers=bearer(token))
        assert r.status_code == 401
        assert r.json()["code"] == "invalid_key"


def test_key_revoked_through_the_api_stops_at_once(api_client: TestClient, api_tokens: Tokens) -> None:
    with session_scope() as s:
        key, token = create_key(s, name="revoked-here", scopes=["read"])
        key_id = key.id
    assert api_client.get("/v1/jobs", headers=bearer(token)).status_code == 200  # now cached
    assert api_client.post(f"/v1/keys/{key_id}/revoke", headers=bearer(api_tokens.admin)).status_code == 200
    assert api_client.get("/v1/jobs", headers=bearer(token)).status_code == 401


def test_a_key_created_over_the_api_works_until_revoked(api_client: TestClient, api_tokens: Tokens) -> None:
    created = api_client.post("/v1/keys", json={"name": "ci", "scopes": ["read", "submit"]},
                              headers=bearer(api_tokens.admin))
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith("ek_") and body["token"].startswith(body["prefix"])
    assert created.headers["cache-control"] == "no-store"
    token = body["token"]
    assert api_client.get("/v1/jobs", headers=bearer(token)).status_code == 200

    listed = api_client.get("/v1/keys", headers=bearer(api_tokens.admin)).json()["keys"]
    mine = next(k for k in listed if k["id"] == body["id"])
    assert "token" not in mine and mine["last_used_at"] is not None

    revoked = api_client.post(f"/v1/keys/{body['prefix']}/revoke", headers=bearer(api_tokens.admin))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert api_client.get("/v1/jobs", headers=bearer(token)).status_code == 401
    missing = api_client.post("/v1/keys/nope/revoke", headers=bearer(api_tokens.admin))
    assert missing.status_code == 404

    bad = api_client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=bearer(api_tokens.admin))
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(PROBLEM)
    assert bad.json()["errors"][0]["loc"][:2] == ["body", "scopes"]
