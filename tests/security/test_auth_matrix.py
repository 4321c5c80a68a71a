"""The first review's auth matrix, held as a table: every /v1 route of the real app x
{no key, bad key, revoked key, wrong scope, another tenant's key}.

Routes come from the app itself, so a route added later is covered without editing this file:
its scope is read from its ``require_<scope>`` dependency, and every path parameter is filled
with an identifier of tenant A's resource. Tenant B's key must then get exactly what it gets
for a resource that does not exist (404), and A's resource must be unchanged.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from earshot.auth import create_key, revoke_key
from earshot.chat.models import Conversation, ConversationTurn
from earshot.db import models as m
from earshot.db.session import session_scope
from earshot.tenants import create_tenant

if TYPE_CHECKING:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient


def _routes(app: FastAPI) -> list[tuple[str, str, str]]:
    """(method, path, scope) of every /v1 route, however the routers were included."""
    from fastapi.routing import APIRoute

    def flat(routes: list[Any]) -> Iterator[APIRoute]:
        for r in routes:
            if isinstance(r, APIRoute):
                yield r
            elif hasattr(r, "original_router"):
                yield from flat(r.original_router.routes)

    def scopes(dependant: Any) -> list[str]:
        found: list[str] = []
        for sub in dependant.dependencies:
            name = getattr(sub.call, "__name__", "")
            if name.startswith("require_"):
                found.append(name.removeprefix("require_"))
            found += scopes(sub)
        return found

    out = []
    for route in flat(list(app.routes)):
        if not route.path.startswith("/v1"):
            continue
        needed = scopes(route.dependant)
        assert needed, f"{route.path} has no require_<scope> dependency: it is open"
        out += [(method, route.path, needed[0]) for method in sorted(route.methods or [])]
    return out


@dataclass
class World:
    tenant_a: str
    tenant_b: str
    job_id: str
    conversation_id: str
    key_id: str
    tokens: dict[str, str]
    source_a: str  # an object tenant A may submit (tenant B may not)
    source_b: str  # and one of B's


@pytest.fixture
def world(s3_bucket: str, moto_server: str, api_env: Any) -> World:
    import boto3

    from tests.fixtures.ingest import make_wav

    tag = uuid.uuid4().hex[:8]
    a, b = f"a-{tag}", f"b-{tag}"
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.put_object(Bucket=s3_bucket, Key="a/call.wav", Body=make_wav(0.5, 7))
    s3.put_object(Bucket=s3_bucket, Key="b/call.wav", Body=make_wav(0.5, 8))
    source_a, source_b = f"s3://{s3_bucket}/a/call.wav", f"s3://{s3_bucket}/b/call.wav"
    with session_scope(api_env.database_url) as s:
        create_tenant(s, tenant_id=a, allowed_sources=[f"s3://{s3_bucket}/a/"])
        create_tenant(s, tenant_id=b, allowed_sources=[f"s3://{s3_bucket}/b/"])
        audio = m.AudioFile(uri=source_a, bucket=s3_bucket, key="a/call.wav", version=tag, duration_s=0.1)
        s.add(audio)
        s.flush()
        job = m.Job(audio_file_id=audio.id, source_uri=audio.uri, engine="local", tasks=["transcribe"],
                    idempotency_key=f"seed-{tag}", tenant_id=a, status="failed")
        s.add(job)
        s.flush()
        s.add(m.Utterance(job_id=job.id, segment_index=0, seq=0, start_s=0, end_s=0.1, text=f"secret-{tag}"))
        conv = Conversation(tenant_id=a, title=f"conv-{tag}")
        s.add(conv)
        s.flush()
        s.add(ConversationTurn(conversation_id=conv.id, seq=1, role="assistant", text="hi", thinking="",
                               think=False, adapter=False, timings={}))
        tokens: dict[str, str] = {}
        for name, tenant, scopes in [
            ("a_all", a, ["read", "submit"]), ("a_read", a, ["read"]), ("a_submit", a, ["submit"]),
            ("a_revoked", a, ["read", "submit", "admin"]),
            ("b_read", b, ["read"]), ("b_submit", b, ["submit"]), ("b_all", b, ["read", "submit"]),
        ]:
            key, token = create_key(s, name=f"{name}-{tag}", scopes=scopes, tenant_id=tenant)
            tokens[name] = token
            if name == "a_revoked":
                revoke_key(s, key.id)
            if name == "a_all":
                key_id = key.id
        ids = (job.id, conv.id)
    return World(a, b, ids[0], ids[1], key_id, tokens, source_a, source_b)


def _path(template: str, w: World) -> str:
    return (template.replace("{job_id}", w.job_id).replace("{conversation_id}", w.conversation_id)
            .replace("{key_id}", w.key_id).replace("{seq}", "1"))


# a valid body for routes that take one, so a 404 is not hidden behind a 422
BODIES: dict[str, dict[str, Any]] = {"/v1/conversations/{conversation_id}/turns": {"question": "what was said?"}}


def _call(client: TestClient, method: str, path: str, token: str | None, template: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("POST", "PUT", "PATCH"):
        return client.request(method, path, headers=headers, json=BODIES.get(template, {}))
    return client.request(method, path, headers=headers)


WRONG_SCOPE = {"read": "a_submit", "submit": "a_read", "admin": "a_all"}
CASES = ["no key", "bad key", "revoked key", "wrong scope"]


@pytest.fixture
def client(api_app: FastAPI) -> Iterator[TestClient]:
    from fastapi.testclient import TestClient

    with TestClient(api_app) as c:
        yield c


def test_every_route_refuses_missing_bad_revoked_and_underscoped_keys(
    world: World, api_app: FastAPI, client: TestClient
) -> None:
    routes = _routes(api_app)
    assert len(routes) >= 15
    failures = []
    for method, template, scope in routes:
        path = _path(template, world)
        for case in CASES:
            token = {
                "no key": None,
                "bad key": "ek_" + uuid.uuid4().hex + uuid.uuid4().hex[:11],
                "revoked key": world.tokens["a_revoked"],
                "wrong scope": world.tokens[WRONG_SCOPE[scope]],
            }[case]
            expected = 403 if case == "wrong scope" else 401
            got = _call(client, method, path, token).status_code
            if got != expected:
                failures.append(f"{method} {template} with {case}: {got}, expected {expected}")
    assert failures == []


def test_another_tenants_resources_answer_like_missing_ones(
    world: World, api_app: FastAPI, client: TestClient
) -> None:
    failures = []
    for method, template, scope in _routes(api_app):
        if scope == "admin" or "{" not in template:
            continue  # admin keys act across tenants by design; listings are checked below
        token = world.tokens["b_all"]
        got = _call(client, method, _path(template, world), token, template)
        missing = _call(client, method, template.replace("{job_id}", str(uuid.uuid4()))
                        .replace("{conversation_id}", str(uuid.uuid4())).replace("{seq}", "1"), token, template)
        if got.status_code != 404 or missing.status_code != 404:
            failures.append(f"{method} {template}: other tenant {got.status_code}, missing {missing.status_code}")
        elif got.json().get("code") != missing.json().get("code"):
            failures.append(f"{method} {template}: other tenant's answer differs from a missing one's")
    assert failures == []
    # and nothing happened to A's things
    with session_scope() as s:
        job = s.get(m.Job, world.job_id)
        assert job is not None and job.status == "failed"
        assert s.get(Conversation, world.conversation_id) is not None


def test_listings_and_search_show_only_the_callers_tenant(world: World, client: TestClient) -> None:
    b = {"Authorization": f"Bearer {world.tokens['b_read']}"}
    a = {"Authorization": f"Bearer {world.tokens['a_read']}"}
    tag = world.tenant_a.removeprefix("a-")
    for path in ("/v1/jobs", "/v1/conversations", f"/v1/search?q=secret-{tag}"):
        theirs = client.get(path, headers=b)
        assert theirs.status_code == 200, (path, theirs.text)
        assert world.job_id not in theirs.text and world.conversation_id not in theirs.text, path
    assert world.job_id in client.get("/v1/jobs", headers=a).text
    assert world.conversation_id in client.get("/v1/conversations", headers=a).text


def test_a_tenant_cannot_submit_anothers_sources_or_unlisted_ones(world: World, client: TestClient) -> None:
    uri = world.source_a
    b = {"Authorization": f"Bearer {world.tokens['b_submit']}"}
    theirs = client.post("/v1/jobs", json={"uri": uri, "tasks": ["transcribe"]}, headers=b)
    missing = client.post("/v1/jobs", json={"uri": uri + ".gone", "tasks": ["transcribe"]}, headers=b)
    for r in (theirs, missing):
        assert 400 <= r.status_code < 500, r.text
    # a denied object and a missing one read the same (no probing what exists)
    assert (theirs.status_code, theirs.json().get("code")) == (missing.status_code, missing.json().get("code"))
    for local in ("/etc/passwd", "file:///etc/hostname", "s3://any-bucket/any-key.wav", uri.replace("/a/", "/b/")):
        r = client.post("/v1/jobs", json={"uri": local, "tasks": ["transcribe"]},
                        headers={"Authorization": f"Bearer {world.tokens['a_submit']}"})
        assert 400 <= r.status_code < 500 and "root:" not in r.text, (local, r.text)
    # A's job cannot be attached to B's conversation, and the answer says no more than for no job
    clip = client.post("/v1/conversations", json={"job_ids": [world.job_id]}, headers=b)
    none = client.post("/v1/conversations", json={"job_ids": [str(uuid.uuid4())]}, headers=b)
    assert clip.status_code == none.status_code == 404, (clip.text, none.text)
    missing_id = json.loads(none.request.content)["job_ids"][0]
    assert clip.text.replace(world.job_id, "ID") == none.text.replace(missing_id, "ID")


def test_idempotency_keys_are_per_tenant_and_bound_to_the_body(world: World, client: TestClient) -> None:
    uri = world.source_a
    a = {"Authorization": f"Bearer {world.tokens['a_submit']}", "Idempotency-Key": "order-42"}
    first = client.post("/v1/jobs", json={"uri": uri, "tasks": ["transcribe"]}, headers=a)
    assert first.status_code == 201, first.text
    again = client.post("/v1/jobs", json={"uri": uri, "tasks": ["transcribe"]}, headers=a)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other_body = client.post("/v1/jobs", json={"uri": uri, "tasks": ["caption"]}, headers=a)
    assert other_body.status_code == 409, other_body.text
    # the same key string from another tenant is another job, never A's
    b = {"Authorization": f"Bearer {world.tokens['b_submit']}", "Idempotency-Key": "order-42"}
    theirs = client.post("/v1/jobs", json={"uri": world.source_b, "tasks": ["transcribe"]}, headers=b)
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["id"] != first.json()["id"] and first.json()["id"] not in theirs.text
    # and the same body as A's (A's source) is refused, not answered with A's job
    same = client.post("/v1/jobs", json={"uri": uri, "tasks": ["transcribe"]}, headers=b)
    assert same.status_code >= 400 and first.json()["id"] not in same.text
