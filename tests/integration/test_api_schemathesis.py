"""Property-based: schemathesis generates requests from the app's own OpenAPI document and checks
every response (no 5xx, documented status codes, content types, headers and schemas, auth
enforced, invalid data rejected, valid data accepted).

A bounded number of examples per operation keeps the run short; raise SCHEMATHESIS_EXAMPLES to
search harder (e.g. before a release)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.fixtures.api import Tokens, bearer

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "10"))
# Schema-valid but meaningless by nature: an opaque cursor that this API never issued, an
# s3:// object that does not exist. Those requests may be refused (422), with these codes only.
SEMANTIC_422 = {"bad_cursor", "source_not_found"}


def _semantic(case: Any) -> bool:
    query = case.query or {}
    return "cursor" in query or (case.method.upper() == "POST" and case.path == "/v1/jobs"
                                 and case.media_type == "application/json") or (
        case.method.upper() == "POST" and case.path.startswith("/v1/conversations")
    )


def _semantic_refusal(body: dict[str, Any]) -> bool:
    """A 422 for what JSON Schema cannot say: a clip whose end is not after its start."""
    if body.get("code") in SEMANTIC_422:
        return True
    errors = body.get("errors") or []
    return bool(errors) and all("end must be after start" in e.get("msg", "") for e in errors)


def _only_extra_query_keys(case: Any) -> bool:
    """A GET with query keys the operation does not declare (FastAPI ignores those)."""
    if case.method.upper() != "GET":
        return False
    declared = {p.name for p in case.operation.query}
    return bool(set(case.query or {}) - declared)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_every_operation_honours_its_openapi_contract(mode: GenerationMode, api_app: FastAPI, api_tokens: Tokens, s3_bucket: str) -> None:
    # s3_bucket points the object store at moto, so generated s3:// URIs get real (404) answers
    loaded = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    headers = bearer(api_tokens.admin)
    failures: dict[str, BaseException] = {}
    tested = 0
    for result in loaded.get_all_operations():
        op = result.ok()

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def check(case: Any) -> None:
            if mode is GenerationMode.POSITIVE and _semantic(case):
                response = case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
                if response.status_code == 422:
                    assert _semantic_refusal(response.json()), response.text
            elif mode is GenerationMode.NEGATIVE and _only_extra_query_keys(case):
                # unknown query keys are ignored, as everywhere in FastAPI: such a request is
                # valid to this API, so only "is it rejected" is skipped, every other check runs
                case.call_and_validate(headers=headers, excluded_checks=[negative_data_rejection])
            elif mode is GenerationMode.NEGATIVE and case.media_type == "multipart/form-data":
                # form fields are text on the wire: a "number" or "boolean" mutation of a text
                # field arrives as valid text, so only the other checks apply
                case.call_and_validate(headers=headers, excluded_checks=[negative_data_rejection])
            else:
                case.call_and_validate(headers=headers)

        started = time.perf_counter()
        try:
            check()
            tested += 1
        except Unsatisfiable:
            if mode is GenerationMode.POSITIVE:
                raise
            # nothing to make invalid (no parameters, no body)
        except (Exception, BaseExceptionGroup) as exc:
            failures[f"{op.method.upper()} {op.path}"] = exc
        finally:
            print(f"{mode.value} {op.method.upper()} {op.path}: {time.perf_counter() - started:.1f} s")
    assert tested >= (15 if mode is GenerationMode.POSITIVE else 10)
    assert not failures, "\n\n".join(f"{name}:\n{exc}" for name, exc in failures.items())
