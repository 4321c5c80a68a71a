"""Jobs over REST: listing with filters and cursors, submission (S3 URI and streamed upload),
idempotency, the upload size limit, retry, cancel and a queue outage."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from earshot import storage
from earshot.config import Settings, get_settings
from earshot.db import models as m
from earshot.db.base import utcnow
from earshot.db.session import session_scope
from earshot.tenants import DEFAULT_TENANT, update_tenant
from tests.fixtures.api import QueueRecorder, Tokens, bearer, make_app

PROBLEM = "application/problem+json"


def _uploads(settings: Settings) -> list[str]:
    root = storage.join_uri(settings.output_url, "uploads") + "/"
    return [o.uri for o in storage.list_objects(root, settings=get_settings())] if storage.parse_uri(root).path.exists() else []


def _job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(m.Job)) or 0)


# --------------------------------------------------------------------------- listing


def test_list_filters_and_cursor_pages(
    api_client: TestClient, api_tokens: Tokens, seeded: Callable[..., str]
) -> None:
    tag = uuid.uuid4().hex[:8]
    base = utcnow() - timedelta(days=1)
    ids = [
        seeded(source=f"s3://bkt-{tag}/calls/{i}.wav", created_at=base + timedelta(minutes=i),
               status="succeeded" if i % 2 == 0 else "failed")
        for i in range(5)
    ]
    other = seeded(source=f"s3://bkt-{tag}/other/x.wav", created_at=base)
    h = bearer(api_tokens.read)

    seen: list[str] = []
    cursor = None
    for _ in range(4):
        params: dict[str, Any] = {"bucket": f"bkt-{tag}", "prefix": "calls/", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api_client.get("/v1/jobs", params=params, headers=h).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, every job once, the other prefix excluded

    failed = api_client.get("/v1/jobs", params={"prefix": f"s3://bkt-{tag}/", "status": "failed"}, headers=h).json()
    assert {j["id"] for j in failed["jobs"]} == {ids[1], ids[3]}

    window = api_client.get(
        "/v1/jobs",
        params={"prefix": f"s3://bkt-{tag}/", "created_after": (base + timedelta(minutes=1)).isoformat(),
                "created_before": (base + timedelta(minutes=3)).isoformat()},
        headers=h,
    ).json()
    assert [j["id"] for j in window["jobs"]] == [ids[2], ids[1]]
    assert other not in seen

    # LIKE wildcards in a prefix are literal: "a_b%/" matches that folder only, not "aXbY/"
    literal = seeded(source=f"s3://bkt-{tag}/a_b%/1.wav", created_at=base)
    seeded(source=f"s3://bkt-{tag}/aXbY/1.wav", created_at=base)
    wild = api_client.get("/v1/jobs", params={"bucket": f"bkt-{tag}", "prefix": "a_b%/"}, headers=h).json()
    assert [j["id"] for j in wild["jobs"]] == [literal]

    job = api_client.get(f"/v1/jobs/{ids[0]}", headers=h).json()
    assert job["status"] == "succeeded" and job["duration_s"] == 120.0 and job["timings"]["analyze_s"] == 6.5
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    failed_job = api_client.get(f"/v1/jobs/{ids[1]}", headers=h).json()
    assert failed_job["error"] is None or failed_job["error"]["code"]

    bad = api_client.get("/v1/jobs", params={"cursor": "not-a-cursor"}, headers=h)
    assert bad.status_code == 422 and bad.json()["code"] == "bad_cursor"
    assert api_client.get("/v1/jobs", params={"status": "bogus"}, headers=h).status_code == 422
    assert api_client.get("/v1/jobs", params={"limit": 0}, headers=h).status_code == 422


def test_unknown_job_is_a_404_problem(api_client: TestClient, api_tokens: Tokens) -> None:
    for job_id in (str(uuid.uuid4()), "not-a-uuid"):
        r = api_client.get(f"/v1/jobs/{job_id}", headers=bearer(api_tokens.read))
        assert r.status_code == 404
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["code"] == "not_found" and r.json()["status"] == 404


# --------------------------------------------------------------------------- uploads


def test_upload_streams_to_storage_and_queues(
    api_client: TestClient, api_tokens: Tokens, api_queue: QueueRecorder, api_env: Settings
) -> None:
    audio = bytes(range(256)) * 40
    r = api_client.post(
        "/v1/jobs",
        files={"file": ("../../etc/My Call #1.wav", audio, "audio/wav")},
        data={"tasks": ["transcribe", "events"], "questions": ["Is anyone shouting?"]},
        headers=bearer(api_tokens.read_submit),
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["tasks"] == ["transcribe", "events"]
    assert job["questions"] == ["Is anyone shouting?"]
    assert api_queue.job_ids == [job["id"]]

    stored = storage.parse_uri(job["source"])
    out_root = storage.parse_uri(api_env.output_url).path
    assert stored.path.parent.parent == out_root / "uploads" / "default"  # under the key's tenant
    uuid.UUID(stored.path.parent.name)
    assert stored.path.name == "My_Call_1.wav"  # one harmless path segment
    assert stored.path.read_bytes() == audio


def test_upload_comma_separated_tasks_and_defaults(
    api_client: TestClient, api_tokens: Tokens, api_env: Settings
) -> None:
    r = api_client.post("/v1/jobs", files={"file": ("a.flac", b"fLaC" * 10)}, data={"tasks": "caption, events"},
                        headers=bearer(api_tokens.submit))
    assert r.status_code == 201 and r.json()["tasks"] == ["caption", "events"]
    r = api_client.post("/v1/jobs", files={"file": ("a.flac", b"fLaC" * 10)}, headers=bearer(api_tokens.submit))
    assert r.status_code == 201 and r.json()["tasks"] == list(api_env.default_tasks)


def test_upload_validation_stores_nothing(
    api_client: TestClient, api_tokens: Tokens, api_env: Settings, api_queue: QueueRecorder
) -> None:
    before = _uploads(api_env)
    h = bearer(api_tokens.submit)
    cases = [
        {"files": {"file": ("a.wav", b"x")}, "data": {"tasks": "transcribe,dance"}},
        {"files": {"file": ("a.wav", b"x")}, "data": {"colour": "blue"}},
        {"files": {"other": ("a.wav", b"x")}},
        {"data": {"tasks": "transcribe"}, "files": {"note": (None, b"text only")}},
    ]
    for kwargs in cases:
        r = api_client.post("/v1/jobs", headers=h, **kwargs)
        assert r.status_code == 422, (kwargs, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
    r = api_client.post("/v1/jobs", content=b"hello", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"
    r = api_client.post("/v1/jobs", content=b"--xx\r\nbroken", headers={**h, "Content-Type": "multipart/form-data; boundary=xx"})
    assert r.status_code == 422
    assert _uploads(api_env) == before and api_queue.job_ids == []


@pytest.fixture
def small_limit_client(api_env: Settings, api_queue: QueueRecorder) -> Iterator[TestClient]:
    settings = api_env.model_copy(update={"api_max_upload_bytes": 1000})
    with TestClient(make_app(settings, api_queue)) as client:
        yield client


def test_oversize_upload_is_413_and_stores_nothing(
    small_limit_client: TestClient, api_tokens: Tokens, api_env: Settings, api_queue: QueueRecorder
) -> None:
    h = bearer(api_tokens.submit)
    jobs_before, uploads_before = _job_count(), _uploads(api_env)

    # declared Content-Length over the limit: refused before the body is read
    r = small_limit_client.post("/v1/jobs", files={"file": ("big.wav", b"\0" * 400_000)}, headers=h)
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith(PROBLEM) and r.json()["code"] == "too_large"

    # just over the limit (Content-Length within the framing allowance): counted while streaming
    r = small_limit_client.post("/v1/jobs", files={"file": ("big.wav", b"\0" * 1001)}, headers=h)
    assert r.status_code == 413, r.text

    # chunked transfer, no Content-Length at all
    boundary = "earshotboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.wav\"\r\n"
               "Content-Type: audio/wav\r\n\r\n").encode()
        for _ in range(10):
            yield b"\1" * 500
        yield f"\r\n--{boundary}--\r\n".encode()

    r = small_limit_client.post(
        "/v1/jobs", content=body(), headers={**h, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413, r.text

    assert _job_count() == jobs_before
    assert _uploads(api_env) == uploads_before
    assert api_queue.job_ids == []

    # at the limit it goes through
    r = small_limit_client.post("/v1/jobs", files={"file": ("ok.wav", b"\0" * 1000)}, headers=h)
    assert r.status_code == 201, r.text


def test_idempotency_key_returns_the_first_job(
    api_client: TestClient, api_tokens: Tokens, api_queue: QueueRecorder, api_env: Settings
) -> None:
    key = f"client-{uuid.uuid4()}"
    h = {**bearer(api_tokens.submit), "Idempotency-Key": key}
    first = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")}, headers=h)
    uploads = _uploads(api_env)
    again = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")}, headers=h)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert api_queue.job_ids == [first.json()["id"]]
    assert _uploads(api_env) == uploads  # the repeat stored nothing
    bad = api_client.post("/v1/jobs", files={"file": ("a.wav", b"one")},
                          headers={**bearer(api_tokens.submit), "Idempotency-Key": "has space"})
    assert bad.status_code == 422


# --------------------------------------------------------------------------- S3 URIs


def test_submitting_an_s3_uri_queues_a_job_and_bad_bodies_are_422(
    s3_bucket: str, api_client: TestClient, api_tokens: Tokens, api_queue: QueueRecorder  # the bucket first: the app's settings point at moto
) -> None:
    boto3.client("s3", endpoint_url=storage.s3_client(get_settings()).meta.endpoint_url).put_object(
        Bucket=s3_bucket, Key="calls/one.wav", Body=b"RIFF"
    )
    with session_scope() as s:  # the tenant may read this prefix (and nothing else)
        update_tenant(s, DEFAULT_TENANT, allowed_sources=[f"s3://{s3_bucket}/calls/"])
    h = bearer(api_tokens.submit)
    uri = f"s3://{s3_bucket}/calls/one.wav"
    r = api_client.post("/v1/jobs", json={"uri": uri, "tasks": ["transcribe"], "callback_url": "https://hooks.example.com/x"},
                        headers={**h, "Idempotency-Key": f"k-{uuid.uuid4()}"})
    assert r.status_code == 201, r.text
    assert r.json()["source"] == uri and api_queue.job_ids == [r.json()["id"]]

    missing = api_client.post("/v1/jobs", json={"uri": f"s3://{s3_bucket}/calls/none.wav"}, headers=h)
    assert missing.status_code == 422 and missing.json()["code"] == "source_not_found"
    for bad in ({"uri": "file:///etc/passwd"}, {"uri": uri, "tasks": []}, {"uri": uri, "tasks": ["dance"]},
                {"uri": uri, "extra": 1}, {}):
        r = api_client.post("/v1/jobs", json=bad, headers=h)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["errors"], r.json()
    r = api_client.post("/v1/jobs", content=b"{not json", headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert api_queue.job_ids == [api_queue.job_ids[0]]


# --------------------------------------------------------------------------- retry / cancel


def test_cancel_and_retry_change_active_jobs_and_refuse_finished_ones(
    api_client: TestClient, api_tokens: Tokens, api_queue: QueueRecorder, seeded: Callable[..., str]
) -> None:
    h = bearer(api_tokens.read_submit)
    queued = seeded(status="queued")
    done = seeded(status="succeeded")

    r = api_client.post(f"/v1/jobs/{queued}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert api_client.post(f"/v1/jobs/{queued}/cancel", headers=h).status_code == 200  # no-op

    r = api_client.post(f"/v1/jobs/{queued}/retry", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert api_queue.job_ids == [queued]

    for action in ("retry", "cancel"):
        r = api_client.post(f"/v1/jobs/{done}/{action}", headers=h)
        assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
        r = api_client.post(f"/v1/jobs/{uuid.uuid4()}/{action}", headers=h)
        assert r.status_code == 404


def test_queue_outage_fails_the_job_with_503(
    api_env: Settings, api_tokens: Tokens, tmp_path: Path
) -> None:
    queue = QueueRecorder(fail=True)
    settings = api_env.model_copy(update={"broker_url": "amqp://guest:guest@127.0.0.1:1//"})
    with TestClient(make_app(settings, queue)) as client:
        r = client.post("/v1/jobs", files={"file": ("a.wav", b"x")}, headers=bearer(api_tokens.read_submit))
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "queue_unavailable" and r.headers["retry-after"]
        source_jobs = client.get("/v1/jobs", params={"prefix": storage.join_uri(api_env.output_url, "uploads")},
                                 headers=bearer(api_tokens.read_submit)).json()["jobs"]
    assert source_jobs and source_jobs[0]["status"] == "failed"
    assert source_jobs[0]["error"]["code"] == "enqueue_failed"
