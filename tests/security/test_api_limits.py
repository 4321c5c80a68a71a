"""Issue 14, "unbounded requests": quotas and rate limits answer 429 with Retry-After, and an
enormous JSON body is refused before it is parsed."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from earshot.auth import create_key
from earshot.db.session import session_scope
from earshot.tenants import create_tenant

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient


@pytest.fixture
def objects(s3_bucket: str, moto_server: str, api_env: Any) -> list[str]:
    import boto3

    from tests.fixtures.ingest import make_wav

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    for i in range(2):
        s3.put_object(Bucket=s3_bucket, Key=f"limits/{i}.wav", Body=make_wav(0.3, i))
    return [f"s3://{s3_bucket}/limits/{i}.wav" for i in range(2)]


def _tenant_key(database_url: str, bucket: str, **quotas: Any) -> str:
    tenant = f"lim-{uuid.uuid4().hex[:8]}"
    with session_scope(database_url) as s:
        create_tenant(s, tenant_id=tenant, allowed_sources=[f"s3://{bucket}/limits/"], **quotas)
        return create_key(s, name=tenant, scopes=["read", "submit"], tenant_id=tenant)[1]


@pytest.fixture
def client(api_app: FastAPI) -> Iterator[TestClient]:
    from fastapi.testclient import TestClient

    with TestClient(api_app) as c:
        yield c


def test_concurrent_jobs_quota_is_429_with_retry_after(
    objects: list[str], s3_bucket: str, api_env: Any, client: TestClient
) -> None:
    token = _tenant_key(api_env.database_url, s3_bucket, max_concurrent_jobs=1)
    headers = {"Authorization": f"Bearer {token}"}
    first = client.post("/v1/jobs", json={"uri": objects[0], "tasks": ["transcribe"]}, headers=headers)
    assert first.status_code == 201, first.text
    second = client.post("/v1/jobs", json={"uri": objects[1], "tasks": ["transcribe"]}, headers=headers)
    assert second.status_code == 429, second.text
    assert int(second.headers["Retry-After"]) > 0 and second.json()["code"] == "quota_exceeded"


def test_request_rate_limit_is_429_with_retry_after(
    objects: list[str], s3_bucket: str, api_env: Any, client: TestClient
) -> None:
    token = _tenant_key(api_env.database_url, s3_bucket, requests_per_minute=3)
    headers = {"Authorization": f"Bearer {token}"}
    codes = [client.get("/v1/jobs", headers=headers) for _ in range(4)]
    assert [r.status_code for r in codes[:3]] == [200, 200, 200]
    assert codes[3].status_code == 429 and int(codes[3].headers["Retry-After"]) >= 1
    assert codes[3].json()["code"] == "rate_limited"


def test_an_enormous_json_body_is_refused_unread(api_env: Any, client: TestClient, s3_bucket: str) -> None:
    token = _tenant_key(api_env.database_url, s3_bucket)
    clips = [{"job_id": str(uuid.uuid4())} for _ in range(20_000)]  # the review's 20,000 clips
    body = json.dumps({"clips": clips, "question": "x" * 100}).encode()
    started = time.monotonic()
    r = client.post("/v1/conversations", content=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    assert time.monotonic() - started < 5  # not 31 s of CPU


def test_clip_lists_are_bounded_by_the_schema(api_env: Any, client: TestClient, s3_bucket: str) -> None:
    token = _tenant_key(api_env.database_url, s3_bucket)
    body = {"job_ids": [str(uuid.uuid4()) for _ in range(17)], "question": "what was said?"}
    r = client.post("/v1/conversations", json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 422 and "job_ids" in r.text
