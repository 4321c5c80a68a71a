"""Tenant isolation in the routes (issue 14): every query scoped to the caller's tenant, another
tenant's resource answers exactly like a missing one, Idempotency-Keys per tenant and bound to
their body, source allow-lists, quotas and rate limits (429 + Retry-After), presigned URL
lifetimes, body size limits and statement_timeout on API sessions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from earshot import storage
from earshot.auth import create_key
from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.tenants import create_tenant, update_tenant
from services.api.db import Database
from tests.fixtures.api import QueueRecorder, bearer, make_app

PROBLEM = "application/problem+json"


@dataclass
class Team:
    id: str
    read: str
    submit: str


def team(**limits: Any) -> Team:
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    with session_scope() as s:
        create_tenant(s, tenant_id=tenant_id, **{"max_concurrent_jobs": None, "max_audio_hours_per_day": None,
                                                  "requests_per_minute": None, **limits})
        read = create_key(s, name=f"{tenant_id}-r", scopes=["read"], tenant_id=tenant_id)[1]
        submit = create_key(s, name=f"{tenant_id}-s", scopes=["read", "submit"], tenant_id=tenant_id)[1]
    return Team(tenant_id, read, submit)


def owned_by(job_id: str, tenant_id: str) -> str:
    with session_scope() as s:
        s.execute(update(m.Job).where(m.Job.id == job_id).values(tenant_id=tenant_id))
    return job_id


@pytest.fixture
def admin_token(api_env: Settings) -> str:
    with session_scope() as s:
        return create_key(s, name="tenants-admin", scopes=["admin"])[1]


def _same_problem(a: Any, b: Any, *, a_id: str, b_id: str) -> None:
    assert a.status_code == b.status_code == 404
    assert a.headers["content-type"] == b.headers["content-type"] == PROBLEM
    assert a.json() == {k: (v.replace(b_id, a_id) if isinstance(v, str) else v) for k, v in b.json().items()}


def test_another_tenants_job_answers_exactly_like_a_missing_one(
    api_client: TestClient, seeded: Callable[..., str], tmp_path: Any
) -> None:
    a, b = team(), team()
    word = "zq" + uuid.uuid4().hex[:8]
    wav = tmp_path / "s.wav"
    wav.write_bytes(b"RIFF0000WAVE")
    job = owned_by(seeded(utterances=[(0.0, 1.0, f"secret {word}")], events=[(0.0, 1.0, "beep")],
                          summaries=[("file", 0, 0.0, 1.0, None, f"about {word}")],
                          traces=[(-1, "q?", "t", "a", False)], speech_uri=wav.as_uri()), a.id)
    failed = owned_by(seeded(status="failed", error=("engine_error", "x")), a.id)
    queued = owned_by(seeded(status="queued"), a.id)

    for path in ("", "/transcript", "/transcript?format=srt", "/summary", "/events", "/reasoning", "/speech"):
        assert api_client.get(f"/v1/jobs/{job}{path}", headers=bearer(a.read)).status_code == 200, path
        missing = str(uuid.uuid4())
        theirs = api_client.get(f"/v1/jobs/{job}{path}", headers=bearer(b.read))
        nothing = api_client.get(f"/v1/jobs/{missing}{path}", headers=bearer(b.read))
        _same_problem(theirs, nothing, a_id=job, b_id=missing)
    for action, target in (("retry", failed), ("cancel", queued)):
        missing = str(uuid.uuid4())
        theirs = api_client.post(f"/v1/jobs/{target}/{action}", headers=bearer(b.submit))
        nothing = api_client.post(f"/v1/jobs/{missing}/{action}", headers=bearer(b.submit))
        _same_problem(theirs, nothing, a_id=target, b_id=missing)
    with session_scope() as s:  # nothing changed
        assert s.get(m.Job, failed).status == "failed" and s.get(m.Job, queued).status == "queued"

    assert {j["id"] for j in api_client.get("/v1/jobs", headers=bearer(a.read)).json()["jobs"]} == {job, failed, queued}
    assert api_client.get("/v1/jobs", headers=bearer(b.read)).json()["jobs"] == []
    assert {h["job_id"] for h in api_client.get("/v1/search", params={"q": word}, headers=bearer(a.read)).json()["hits"]} == {job}
    assert api_client.get("/v1/search", params={"q": word}, headers=bearer(b.read)).json() == {
        "query": word, "hits": [], "next_cursor": None}


def test_admin_keys_see_every_tenant_and_say_so(
    api_client: TestClient, seeded: Callable[..., str], admin_token: str
) -> None:
    a, b = team(), team()
    tag = uuid.uuid4().hex[:8]
    ja = owned_by(seeded(source=f"s3://adm-{tag}/a.wav"), a.id)
    jb = owned_by(seeded(source=f"s3://adm-{tag}/b.wav"), b.id)
    listed = api_client.get("/v1/jobs", params={"prefix": f"s3://adm-{tag}/"}, headers=bearer(admin_token)).json()
    assert {(j["id"], j["tenant_id"]) for j in listed["jobs"]} == {(ja, a.id), (jb, b.id)}
    assert api_client.get(f"/v1/jobs/{jb}", headers=bearer(admin_token)).json()["tenant_id"] == b.id
    own = api_client.get(f"/v1/jobs/{ja}", headers=bearer(a.read)).json()
    assert "tenant_id" not in own  # a tenant's own key is not told about tenants
    keys = api_client.get("/v1/keys", headers=bearer(admin_token)).json()["keys"]
    assert {k["tenant_id"] for k in keys} >= {a.id, b.id}


def test_idempotency_key_is_per_tenant_and_bound_to_its_body(
    api_client: TestClient, api_queue: QueueRecorder
) -> None:
    a, b = team(), team()
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")}, headers={**bearer(a.submit), **key})
    again = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")}, headers={**bearer(a.submit), **key})
    other_tenant = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")}, headers={**bearer(b.submit), **key})
    assert (first.status_code, again.status_code, other_tenant.status_code) == (201, 200, 201)
    assert again.json()["id"] == first.json()["id"] != other_tenant.json()["id"]

    changed = api_client.post("/v1/jobs", files={"file": ("a.wav", b"two")}, headers={**bearer(a.submit), **key})
    assert changed.status_code == 409 and changed.json()["code"] == "idempotency_conflict"
    changed = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")}, data={"tasks": "caption"},
                              headers={**bearer(a.submit), **key})
    assert changed.status_code == 409
    assert api_queue.job_ids == [first.json()["id"], other_tenant.json()["id"]]


def test_a_denied_source_answers_like_a_missing_one(
    s3_bucket: str, api_client: TestClient, api_queue: QueueRecorder  # the bucket first: the app's settings point at moto
) -> None:
    a = team()
    s3 = boto3.client("s3", endpoint_url=storage.s3_client(get_settings()).meta.endpoint_url)
    for key in ("allowed/here.wav", "secret/here.wav"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"RIFF")
    with session_scope() as s:
        update_tenant(s, a.id, allowed_sources=[f"s3://{s3_bucket}/allowed/"])

    def post(uri: str) -> Any:
        return api_client.post("/v1/jobs", json={"uri": uri, "tasks": ["transcribe"]}, headers=bearer(a.submit))

    ok = post(f"s3://{s3_bucket}/allowed/here.wav")
    assert ok.status_code == 201, ok.text
    answers = {
        uri: post(uri)
        for uri in (f"s3://{s3_bucket}/secret/here.wav",  # exists, not allowed
                    f"s3://{s3_bucket}/allowed/nothing.wav",  # allowed, missing
                    "s3://no-such-bucket-anywhere/allowed/here.wav")  # no bucket at all
    }
    for uri, r in answers.items():
        assert r.status_code == 422, r.text
        assert r.json()["code"] == "source_not_found"
        assert r.json()["detail"] == f"cannot read {uri}: no such object, or this key may not read it"
    assert api_queue.job_ids == [ok.json()["id"]]


def test_quota_and_rate_limit_answer_429_with_retry_after(api_env: Settings, api_queue: QueueRecorder) -> None:
    with TestClient(make_app(api_env, api_queue)) as client:
        busy = team(max_concurrent_jobs=1)
        assert client.post("/v1/jobs", files={"file": ("a.wav", b"1")}, headers=bearer(busy.submit)).status_code == 201
        over = client.post("/v1/jobs", files={"file": ("b.wav", b"2")}, headers=bearer(busy.submit))
        assert over.status_code == 429 and over.json()["code"] == "quota_exceeded"
        assert int(over.headers["retry-after"]) > 0
        assert over.headers["content-type"] == PROBLEM

        chatty = team(requests_per_minute=3)
        codes = [client.get("/v1/jobs", headers=bearer(chatty.read)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = client.get("/v1/jobs", headers=bearer(chatty.read))
        assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        # per tenant: another tenant is not slowed down
        assert client.get("/v1/jobs", headers=bearer(team().read)).status_code == 200


@pytest.fixture
def speech_job(api_env: Settings, s3_bucket: str, seeded: Callable[..., str]) -> Iterator[str]:
    boto3.client("s3", endpoint_url=storage.s3_client(get_settings()).meta.endpoint_url).put_object(
        Bucket=s3_bucket, Key="speech/s.wav", Body=b"RIFF0000WAVE")
    yield seeded(speech_uri=f"s3://{s3_bucket}/speech/s.wav")


def _expires(url: str) -> int:
    return int(parse_qs(urlparse(url).query)["X-Amz-Expires"][0])


def test_presigned_urls_last_15_minutes_by_default_and_at_most_the_cap(
    api_env: Settings, api_queue: QueueRecorder, api_client: TestClient, speech_job: str
) -> None:
    with session_scope() as s:
        token = create_key(s, name="speech", scopes=["read"])[1]
    h = bearer(token)
    assert _expires(api_client.get(f"/v1/jobs/{speech_job}/speech", headers=h).json()["url"]) == 900
    assert _expires(api_client.get(f"/v1/jobs/{speech_job}/speech?expires_s=3600", headers=h).json()["url"]) == 3600
    assert api_client.get(f"/v1/jobs/{speech_job}/speech?expires_s=7200", headers=h).status_code == 422
    capped = api_env.model_copy(update={"api_presign_max_s": 600})
    with TestClient(make_app(capped, api_queue)) as client:
        assert _expires(client.get(f"/v1/jobs/{speech_job}/speech?expires_s=3600", headers=h).json()["url"]) == 600
    with pytest.raises(ValueError):
        Settings(api_presign_max_s=7200)  # the cap itself cannot exceed one hour


def test_every_json_body_is_capped(api_env: Settings, api_queue: QueueRecorder, admin_token: str) -> None:
    small = api_env.model_copy(update={"api_max_json_bytes": 2048})
    big = {"name": "x" * 3000, "scopes": ["read"]}
    with TestClient(make_app(small, api_queue), headers=bearer(admin_token)) as client:
        for path, body in (("/v1/keys", big), ("/v1/jobs", {"uri": "s3://b/" + "k" * 3000}),
                           ("/v1/conversations", {"job_ids": ["x"] * 1000}),
                           (f"/v1/conversations/{uuid.uuid4()}/turns", {"question": "q" * 3000})):
            r = client.post(path, json=body)
            assert r.status_code == 413, (path, r.text)
            assert r.headers["content-type"] == PROBLEM and r.json()["code"] == "too_large"

        def chunked() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
            yield b'{"name": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'", "scopes": ["read"]}'

        r = client.post("/v1/keys", content=chunked(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["code"] == "too_large"
        assert client.post("/v1/keys", json={"name": "fits", "scopes": ["read"]}).status_code == 201


def test_api_sessions_have_a_statement_timeout(api_env: Settings) -> None:
    async def main(settings: Settings) -> tuple[str, str]:
        db = Database(settings)
        try:
            async with db.reader() as conn:
                shown = (await conn.execute(text("SHOW statement_timeout"))).scalar_one()
                try:
                    await conn.execute(text("SELECT pg_sleep(2)"))
                    outcome = "finished"
                except Exception as exc:  # psycopg's QueryCanceled, wrapped by SQLAlchemy
                    outcome = type(exc.__cause__ or exc).__name__
            return shown, outcome
        finally:
            await db.dispose()

    assert asyncio.run(main(api_env))[0] == "10s"
    assert asyncio.run(main(api_env.model_copy(update={"api_statement_timeout_ms": 200}))) == ("200ms", "QueryCanceled")
