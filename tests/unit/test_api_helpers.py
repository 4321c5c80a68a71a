"""Small pieces of the API: upload file names, cursors, problem documents in the OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from earshot.config import Settings
from earshot.db.models import Job
from services.api.app import create_app
from services.api.cursors import decode_job_cursor, decode_offset, encode_job_cursor, encode_offset
from services.api.problems import ApiProblem
from services.api.upload import safe_filename


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("call.wav", "call.wav"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\Voice Memo 1.m4a", "Voice_Memo_1.m4a"),
        ("..", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("Ünïcödé – résumé.mp3", "Unicode_resume.mp3"),
        (".hidden", "hidden"),
        ("a" * 300 + ".wav", "a" * 120),
    ],
)
def test_safe_filename_drops_paths_and_odd_characters_and_is_never_empty(raw: str | None, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_job_cursor_round_trips_and_refuses_foreign_text() -> None:
    job = Job(id="0b8e2a52-5a8e-4f38-9d1e-1f6f3f1c2b7a", created_at=datetime(2026, 11, 26, 9, 0, tzinfo=UTC))
    assert decode_job_cursor(encode_job_cursor(job)) == (job.created_at, job.id)
    for bad in ("", "!!!", "bnVsbA", "e30"):
        with pytest.raises(ApiProblem):
            decode_job_cursor(bad)


def test_search_cursor_round_trips_and_refuses_offsets_past_the_cap() -> None:
    assert decode_offset(None) == 0 and decode_offset(encode_offset(40)) == 40
    for bad in ("eA", "bzotMQ", encode_offset(10**9)):
        with pytest.raises(ApiProblem):
            decode_offset(bad)


def test_openapi_documents_problems_and_security() -> None:
    schema = create_app(Settings()).openapi()
    assert schema["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "ek_...",
        "description": schema["components"]["securitySchemes"]["ApiKey"]["description"],
    }
    for path, item in schema["paths"].items():
        for method, op in item.items():
            needs_key = path.startswith("/v1/")
            assert bool(op.get("security")) == needs_key, (method, path)
            for status, resp in op["responses"].items():
                if int(status) >= 400:
                    assert list(resp["content"]) == ["application/problem+json"], (method, path, status)
            if needs_key:
                assert {"401", "403"} <= set(op["responses"]), (method, path)
    post = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert set(post) == {"application/json", "multipart/form-data"}
    assert "examples" in schema["components"]["schemas"]["JobOut"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_unknown_routes_and_methods_are_problems() -> None:
    from fastapi.testclient import TestClient

    with TestClient(create_app(Settings())) as client:
        missing = client.get("/v2/nothing")
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert missing.json() == {"type": "urn:earshot:problem:not_found", "title": "Not Found", "status": 404,
                                  "detail": "Not Found", "instance": "/v2/nothing", "code": "not_found"}
        wrong = client.delete("/healthz")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET"
        assert wrong.json()["code"] == "method_not_allowed"
