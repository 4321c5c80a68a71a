"""Full-text search on PostgreSQL: planted phrases are found, better matches rank first, each hit
carries its job and absolute time, snippets are safe, odd queries never fail."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.fixtures.api import Tokens, bearer


@pytest.fixture
def planted(seeded: Callable[..., str]) -> dict[str, str]:
    # a made-up word keeps other tests' rows (same database) out of the results
    word = "zq" + uuid.uuid4().hex[:8]
    strong = seeded(
        utterances=[
            (0.0, 4.0, "good morning and welcome to the call"),
            # second 3723.5 of the file: in segment 6, stored on the file's timeline
            (3723.5, 3727.0, f"the {word} lighthouse keeper saw the {word} lighthouse flash"),
        ],
        summaries=[("file", 0, 0.0, 3800.0, f"{word} report", f"A keeper describes the {word} lighthouse.")],
    )
    weak = seeded(
        utterances=[(12.25, 20.0, f"a {word} boat drifted for hours until someone mentioned a lighthouse far away "
                                  "on the other side of the bay where nobody had been for years")],
    )
    noise = seeded(utterances=[(1.0, 2.0, f"only {word} here, nothing else")])
    return {"word": word, "strong": strong, "weak": weak, "noise": noise}


def test_better_match_ranks_first_with_the_right_time(
    api_client: TestClient, api_tokens: Tokens, planted: dict[str, str]
) -> None:
    word = planted["word"]
    r = api_client.get("/v1/search", params={"q": f"{word} lighthouse", "kind": "utterance"},
                       headers=bearer(api_tokens.read))
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert [h["job_id"] for h in hits] == [planted["strong"], planted["weak"]]  # noise lacks "lighthouse"
    best = hits[0]
    assert best["kind"] == "utterance" and best["start"] == 3723.5 and best["end"] == 3727.0
    assert best["source"].startswith("s3://seed-bucket/")
    assert best["score"] > hits[1]["score"]
    assert f"<mark>{word}</mark>" in best["snippet"] and "<mark>lighthouse</mark>" in best["snippet"]
    assert hits[1]["start"] == 12.25


def test_phrase_summary_and_filters(
    api_client: TestClient, api_tokens: Tokens, planted: dict[str, str]
) -> None:
    h = bearer(api_tokens.read)
    word = planted["word"]
    phrase = api_client.get("/v1/search", params={"q": f'"{word} lighthouse"'}, headers=h).json()["hits"]
    assert {x["job_id"] for x in phrase} == {planted["strong"]}  # adjacent words only
    kinds = {x["kind"] for x in phrase}
    assert kinds == {"utterance", "summary"}
    summary = next(x for x in phrase if x["kind"] == "summary")
    assert summary["level"] == "file" and summary["start"] == 0.0

    only = api_client.get("/v1/search", params={"q": word, "job_id": planted["noise"]}, headers=h).json()["hits"]
    assert [x["job_id"] for x in only] == [planted["noise"]]
    excluded = api_client.get("/v1/search", params={"q": f"{word} -lighthouse"}, headers=h).json()["hits"]
    assert [x["job_id"] for x in excluded] == [planted["noise"]]


def test_search_pages_add_up_to_the_unpaged_hits(api_client: TestClient, api_tokens: Tokens, planted: dict[str, str]) -> None:
    h = bearer(api_tokens.read)
    word = planted["word"]
    everything = api_client.get("/v1/search", params={"q": word, "limit": 100}, headers=h).json()
    assert everything["next_cursor"] is None and len(everything["hits"]) == 4
    seen, cursor = [], None
    while True:
        params: dict[str, object] = {"q": word, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = api_client.get("/v1/search", params=params, headers=h).json()
        seen += [(x["kind"], x["job_id"], x["start"]) for x in page["hits"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [(x["kind"], x["job_id"], x["start"]) for x in everything["hits"]]
    assert api_client.get("/v1/search", params={"q": word, "cursor": "!!"}, headers=h).status_code == 422


@pytest.mark.parametrize(
    "query", ["the", "!!!", "<script>", "a & b | !c", "'\"", "-", "OR", "日本語", "x" * 500, "sirene:*"]
)
def test_odd_queries_never_fail(api_client: TestClient, api_tokens: Tokens, query: str) -> None:
    r = api_client.get("/v1/search", params={"q": query}, headers=bearer(api_tokens.read))
    assert r.status_code == 200, r.text


def test_snippet_is_html_escaped(api_client: TestClient, api_tokens: Tokens, seeded: Callable[..., str]) -> None:
    word = "zq" + uuid.uuid4().hex[:8]
    seeded(utterances=[(0.0, 1.0, f"<img src=x onerror=alert(1)> fish & {word} & <b>chips</b>")])
    hit = api_client.get("/v1/search", params={"q": word}, headers=bearer(api_tokens.read)).json()["hits"][0]
    snippet = hit["snippet"]
    assert f"&amp; <mark>{word}</mark> &amp;" in snippet
    assert "<" not in snippet.replace("<mark>", "").replace("</mark>", "")  # nothing else is markup
    assert hit["text"].startswith("<img")  # the raw text is returned as stored


def test_missing_query_is_422(api_client: TestClient, api_tokens: Tokens) -> None:
    for params in ({}, {"q": ""}, {"q": "x", "limit": 101}, {"q": "x", "kind": "event"}):
        r = api_client.get("/v1/search", params=params, headers=bearer(api_tokens.read))
        assert r.status_code == 422, params
