"""A job's results over REST: transcript in every format (valid SRT/WebVTT), summaries, events
with filters, reasoning and the spoken summary."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from earshot.exports import validate_srt, validate_vtt
from tests.fixtures.api import Tokens, bearer

# deliberately messy, as model output is: out of order, overlapping, zero-length, blank, multi-line
UTTERANCES = [
    (3725.0, 3729.5, "and then the siren started"),
    (0.0, 2.0, "Hello <there> & welcome"),
    (1.5, 4.0, "overlapping line\n\nwith a blank line inside"),
    (10.0, 10.0, "zero length"),
    (12.0, 14.0, "   "),
    (600.25, 603.0, "second segment --> arrow"),
]
EVENTS = [(5.0, 12.5, "Siren wailing"), (20.0, 22.0, "dog bark"), (30.0, 31.0, "siren"), (650.0, 700.0, "music")]


@pytest.fixture
def job(seeded: Callable[..., str], tmp_path: Path) -> str:
    wav = tmp_path / "speech.wav"
    wav.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100))
    return seeded(
        utterances=UTTERANCES,
        events=EVENTS,
        summaries=[
            ("segment", 1, 600.0, 1200.0, None, "later part"),
            ("chapter", 0, 0.0, 600.0, "Opening", "greetings"),
            ("file", 0, 0.0, 3730.0, None, "A long call with a siren."),
            ("caption", 0, 0.0, 600.0, None, "an office"),
        ],
        traces=[(-1, "Was there a siren?", "a rising tone near the end", "Yes", True),
                (0, "Was there a siren?", "nothing yet", "No", False)],
        speech_uri=wav.as_uri(),
    )


def test_transcript_json_lists_every_utterance_in_time_order(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    r = api_client.get(f"/v1/jobs/{job}/transcript", headers=bearer(api_tokens.read))
    assert r.status_code == 200
    body = r.json()
    assert body["job_id"] == job and body["status"] == "succeeded"
    starts = [u["start"] for u in body["utterances"]]
    assert starts == sorted(starts) and len(starts) == len(UTTERANCES)


def test_transcript_srt_is_valid(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    r = api_client.get(f"/v1/jobs/{job}/transcript", params={"format": "srt"}, headers=bearer(api_tokens.read))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-subrip")
    text = r.text
    assert validate_srt(text) == []
    blocks = [b.split("\n") for b in text.strip().split("\n\n")]
    assert [b[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]  # index from 1
    timings = [b[1] for b in blocks]
    assert all(re.fullmatch(r"\d{2}:\d{2}:\d{2},\d{3} --> \d{2}:\d{2}:\d{2},\d{3}", t) for t in timings)
    assert timings[-1].startswith("01:02:05,000")  # 3725 s
    starts = [t.split(" --> ")[0] for t in timings]
    assert starts == sorted(starts)


def test_transcript_vtt_is_valid(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    r = api_client.get(f"/v1/jobs/{job}/transcript", params={"format": "vtt"}, headers=bearer(api_tokens.read))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/vtt")
    text = r.text
    assert text.startswith("WEBVTT\n")
    assert validate_vtt(text) == []
    timings = re.findall(r"^(\d{2}:\d{2}:\d{2}\.\d{3}) --> (\d{2}:\d{2}:\d{2}\.\d{3})$", text, flags=re.M)
    assert len(timings) == 5 and timings[0][0] == "00:00:00.000"
    flat = [t for pair in timings for t in pair]
    assert flat == sorted(flat)  # monotonic, no overlap
    assert "&lt;there&gt; &amp; welcome" in text


def test_transcript_txt_md_and_bad_format(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    h = bearer(api_tokens.read)
    txt = api_client.get(f"/v1/jobs/{job}/transcript?format=txt", headers=h)
    assert txt.headers["content-type"].startswith("text/plain")
    assert txt.text.splitlines()[0] == "Hello <there> & welcome"
    md = api_client.get(f"/v1/jobs/{job}/transcript?format=md", headers=h)
    assert md.headers["content-type"].startswith("text/markdown")
    assert "## Summary" in md.text and "A long call with a siren." in md.text and "## Transcript" in md.text
    bad = api_client.get(f"/v1/jobs/{job}/transcript?format=docx", headers=h)
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "format"]


def test_summary_lists_file_chapter_segment_and_caption_levels(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    body = api_client.get(f"/v1/jobs/{job}/summary", headers=bearer(api_tokens.read)).json()
    assert body["summary"] == "A long call with a siren."
    assert [i["level"] for i in body["items"]] == ["file", "chapter", "segment", "caption"]
    assert body["items"][1]["title"] == "Opening"


def test_event_filters_match_label_duration_and_time_window(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    h = bearer(api_tokens.read)

    def labels(**params: object) -> list[str]:
        r = api_client.get(f"/v1/jobs/{job}/events", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [e["label"] for e in r.json()["events"]]

    assert labels() == ["Siren wailing", "dog bark", "siren", "music"]
    assert labels(label="SIREN") == ["Siren wailing", "siren"]
    assert labels(label="siren", min_duration=5) == ["Siren wailing"]
    assert labels(start=12.0, end=25.0) == ["Siren wailing", "dog bark"]  # overlapping the window
    assert labels(start=600) == ["music"]
    assert labels(label="100%_") == []  # LIKE wildcards are literal
    first = api_client.get(f"/v1/jobs/{job}/events", headers=h).json()["events"][0]
    assert first == {"start": 5.0, "end": 12.5, "duration": 7.5, "label": "Siren wailing", "raw": "[5.0-12.5] Siren wailing"}
    assert labels(start=13.0, end=12.0) == []  # an empty window
    assert api_client.get(f"/v1/jobs/{job}/events", params={"start": "nan"}, headers=h).status_code == 422


def test_reasoning_lists_file_answers_before_segment_answers(api_client: TestClient, api_tokens: Tokens, job: str) -> None:
    traces = api_client.get(f"/v1/jobs/{job}/reasoning", headers=bearer(api_tokens.read)).json()["traces"]
    assert [(t["segment_index"], t["answer"], t["adapter"]) for t in traces] == [(-1, "Yes", True), (0, "No", False)]


def test_speech_metadata_and_download_and_404_when_missing(
    api_client: TestClient, api_tokens: Tokens, job: str, seeded: Callable[..., str], tmp_path: Path
) -> None:
    h = bearer(api_tokens.read)
    meta = api_client.get(f"/v1/jobs/{job}/speech", headers=h).json()
    assert meta["uri"] == (tmp_path / "speech.wav").as_uri() and meta["url"] == meta["uri"]
    assert meta["sample_rate"] == 22050 and meta["voice"] == "en-us"
    audio = api_client.get(f"/v1/jobs/{job}/speech", params={"download": "true"}, headers=h)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.content == (tmp_path / "speech.wav").read_bytes()

    silent = seeded()
    r = api_client.get(f"/v1/jobs/{silent}/speech", headers=h)
    assert r.status_code == 404 and r.json()["code"] == "no_speech"
    (tmp_path / "speech.wav").unlink()
    gone = api_client.get(f"/v1/jobs/{job}/speech", params={"download": "true"}, headers=h)
    assert gone.status_code == 404


def test_results_of_an_unknown_job_are_404_problems(api_client: TestClient, api_tokens: Tokens) -> None:
    for part in ("transcript", "summary", "events", "reasoning", "speech"):
        r = api_client.get(f"/v1/jobs/4f1c1a52-0000-4000-8000-000000000000/{part}", headers=bearer(api_tokens.read))
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
