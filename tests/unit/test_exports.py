"""Result writers: every subtitle output must pass the validators, whatever the input."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from earshot.exports import (
    FORMATS,
    format_timestamp,
    render,
    subtitle_cues,
    to_json,
    to_markdown,
    to_srt,
    to_txt,
    to_vtt,
    validate_srt,
    validate_vtt,
)
from earshot.results import (
    Chapter,
    ErrorInfo,
    Event,
    JobReport,
    Reasoning,
    SegmentInfo,
    Utterance,
)


def U(start: float, end: float, text: str) -> Utterance:
    return Utterance(start=start, end=end, text=text)


REALISTIC = [
    U(0.0, 2.5, "Welcome to the show."),
    U(2.5, 6.04, "Today we talk about audio models."),
    U(6.5, 9.999, "Let's begin."),
]

NASTY = [
    U(30.0, 31.0, "unsorted: comes last"),
    U(5.0, 12.0, "overlaps the next two"),
    U(6.0, 6.0, "zero length"),
    U(7.0, 6.5, "negative length"),
    U(8.0, 9.0, "   "),  # empty text: skipped
    U(9.0, 10.0, "line one\n\n  line two after a blank  \n"),
    U(-3.0, 0.2, "negative start"),
    U(20.0, 21.0, "arrow --> inside <b>tags</b> & stuff"),
    U(float("nan"), 1.0, "nan start is dropped"),
    U(25.0, float("inf"), "infinite end is dropped"),
    U(9.0, 10.0, "same start as another"),
    U(37_000.0, 37_002.25, "more than ten hours in"),
    U(360_000.5, 360_001.0, "more than a hundred hours in"),
]


def _report(transcript: list[Utterance] | None = None) -> JobReport:
    return JobReport(
        job_id="job-123",
        source="s3://bucket/in/My *great* podcast_ep#1.mp3",
        status="succeeded",
        tasks=["transcribe", "events", "summarize"],
        duration=3725.4,
        segments=[SegmentInfo(index=0, start=0, end=600, status="done")],
        transcript=REALISTIC if transcript is None else transcript,
        summary="Two hosts discuss audio models.\n\nThey *agree* on <everything>.",
        chapters=[
            Chapter(start=3600.0, end=3725.4, title="Wrap-up", summary="Goodbyes"),
            Chapter(start=0.0, end=3600.0, title="Intro | models"),
        ],
        captions=["Speech over quiet music."],
        events=[
            Event(start=12.0, end=14.5, label="laughter"),
            Event(start=1.0, end=2.0, label="door | slam"),
        ],
        reasoning=[
            Reasoning(
                question="How many speakers?",
                thinking="I hear a low voice.\nThen a higher one.",
                answer="Two.",
                adapter=True,
            )
        ],
        outputs={"srt": "s3://bucket/out/job-123.srt"},
    )


# --------------------------------------------------------------------------- timestamps/cues


def test_format_timestamp_pads_fields_and_allows_100_hours() -> None:
    assert format_timestamp(0) == "00:00:00,000"
    assert format_timestamp(3_723_004) == "01:02:03,004"
    assert format_timestamp(3_723_004, ".") == "01:02:03.004"
    assert format_timestamp(100 * 3_600_000 + 1) == "100:00:00,001"


def test_cues_are_strictly_monotonic_on_nasty_input() -> None:
    cues = subtitle_cues(NASTY)
    assert len(cues) == 10  # 13 minus blank text, NaN start, inf end
    for cue in cues:
        assert cue.end_ms > cue.start_ms
        assert cue.lines and all(line.strip() for line in cue.lines)
    for prev, cue in itertools.pairwise(cues):
        assert prev.end_ms <= cue.start_ms
    assert cues[0].start_ms == 0 and cues[0].lines == ("negative start",)
    # An overlapping cue is cut where the next begins; start times are kept when possible.
    overlapping = next(c for c in cues if c.lines == ("overlaps the next two",))
    assert (overlapping.start_ms, overlapping.end_ms) == (5000, 6000)
    zero = next(c for c in cues if c.lines == ("zero length",))
    assert zero.end_ms - zero.start_ms == 500
    assert cues[-1].start_ms == 360_000_500


def test_cues_keep_good_input_unchanged() -> None:
    cues = subtitle_cues(REALISTIC)
    assert [(c.start_ms, c.end_ms) for c in cues] == [(0, 2500), (2500, 6040), (6500, 9999)]


# --------------------------------------------------------------------------- SRT / VTT


def test_srt_of_a_realistic_transcript_is_exact_and_valid() -> None:
    text = to_srt(REALISTIC)
    assert text == (
        "1\n00:00:00,000 --> 00:00:02,500\nWelcome to the show.\n\n"
        "2\n00:00:02,500 --> 00:00:06,040\nToday we talk about audio models.\n\n"
        "3\n00:00:06,500 --> 00:00:09,999\nLet's begin.\n"
    )
    assert validate_srt(text) == []


def test_vtt_of_a_realistic_transcript_is_valid() -> None:
    text = to_vtt(REALISTIC)
    assert text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nWelcome to the show.\n\n")
    assert text.endswith("00:00:06.500 --> 00:00:09.999\nLet's begin.\n")
    assert validate_vtt(text) == []


def test_srt_and_vtt_on_nasty_input_are_valid() -> None:
    srt, vtt = to_srt(NASTY), to_vtt(NASTY)
    assert validate_srt(srt) == []
    assert validate_vtt(vtt) == []
    assert "line one\nline two after a blank\n" in srt
    assert "arrow -> inside <b>tags</b> & stuff" in srt
    assert "arrow --&gt; inside &lt;b&gt;tags&lt;/b&gt; &amp; stuff" in vtt
    assert "10:16:40,000 --> 10:16:42,250" in srt
    assert "100:00:00.500 --> 100:00:01.000" in vtt
    assert srt.count("\n\n") == 9  # 10 cues, one blank line between each


def test_empty_inputs_give_empty_valid_files() -> None:
    assert to_srt([]) == ""
    assert to_vtt([U(0, 1, " \n ")]) == "WEBVTT\n"
    assert validate_srt("") == []
    assert validate_vtt("WEBVTT\n") == []
    assert to_txt([]) == ""


def test_min_duration_is_configurable() -> None:
    [cue] = subtitle_cues([U(1, 1, "x")], min_duration_s=2.0)
    assert (cue.start_ms, cue.end_ms) == (1000, 3000)


# --------------------------------------------------------------------------- validators


@pytest.mark.parametrize(
    ("sample", "problem"),
    [
        ("2\n00:00:00,000 --> 00:00:01,000\nx\n", "expected cue index 1"),
        ("1\n00:00:00.000 --> 00:00:01.000\nx\n", "bad timing line"),
        ("1\n0:00:00,000 --> 00:00:01,000\nx\n", "bad timing line"),
        ("1\n00:00:61,000 --> 00:01:01,000\nx\n", "bad timing line"),
        ("1\n00:00:02,000 --> 00:00:01,000\nx\n", "end is not after start"),
        ("1\n00:00:01,000 --> 00:00:01,000\nx\n", "end is not after start"),
        ("1\n00:00:00,000 --> 00:00:01,000\n", "no text"),
        ("1\n", "no timing line"),
        (
            "1\n00:00:05,000 --> 00:00:06,000\na\n\n2\n00:00:01,000 --> 00:00:02,000\nb\n",
            "starts before the previous cue",
        ),
        (
            "1\n00:00:00,000 --> 00:00:03,000\na\n\n2\n00:00:01,000 --> 00:00:02,000\nb\n",
            "overlaps the previous cue",
        ),
        # A blank line inside cue text splits the cue: the second half has no index/timing.
        ("1\n00:00:00,000 --> 00:00:01,000\nline one\n\nline two\n", "expected cue index 2"),
    ],
)
def test_validate_srt_reports_each_broken_sample(sample: str, problem: str) -> None:
    problems = validate_srt(sample)
    assert any(problem in p for p in problems), problems


def test_validate_srt_accepts_crlf_bom_and_overlap_when_allowed() -> None:
    text = "\ufeff1\r\n00:00:00,000 --> 00:00:03,000\r\na\r\n\r\n2\r\n00:00:01,000 --> 00:00:04,000\r\nb\r\n"
    assert validate_srt(text, allow_overlap=True) == []
    assert validate_srt(text) != []


@pytest.mark.parametrize(
    ("sample", "problem"),
    [
        ("00:00:00.000 --> 00:00:01.000\nx\n", "expected 'WEBVTT' header"),
        ("WEBVTTX\n\n00:00:00.000 --> 00:00:01.000\nx\n", "expected 'WEBVTT' header"),
        ("WEBVTT\n00:00:00.000 --> 00:00:01.000\nx\n", "followed by a blank line"),
        ("WEBVTT\n\n00:00:00,000 --> 00:00:01,000\nx\n", "bad timing line"),
        ("WEBVTT\n\n00:00:02.000 --> 00:00:01.000\nx\n", "end is not after start"),
        ("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na --> b\n", "contains '-->'"),
        ("WEBVTT\n\nid-only\n", "no timing line"),
        (
            "WEBVTT\n\n00:00:05.000 --> 00:00:06.000\na\n\n00:00:01.000 --> 00:00:02.000\nb\n",
            "starts before the previous cue",
        ),
    ],
)
def test_validate_vtt_reports_each_broken_sample(sample: str, problem: str) -> None:
    problems = validate_vtt(sample)
    assert any(problem in p for p in problems), problems


def test_validate_vtt_accepts_spec_features() -> None:
    text = (
        "WEBVTT - a title\n\n"
        "NOTE written by hand\nacross lines\n\n"
        "STYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.500 align:start position:10%\n<v Anna>Hi\n\n"
        "00:00:02.500 --> 00:00:03.000\n\n"
        "120:00:00.000 --> 120:00:01.000\nlate\n"
    )
    assert validate_vtt(text) == []


# --------------------------------------------------------------------------- other formats


def test_txt_orders_and_flattens() -> None:
    text = to_txt([U(5, 6, "second\nhalf"), U(0, 1, "first"), U(3, 4, "  ")])
    assert text == "first\nsecond half\n"


def test_json_round_trips() -> None:
    report = _report()
    text = to_json(report)
    assert JobReport.model_validate_json(text) == report
    assert json.loads(text)["transcript"][0]["text"] == "Welcome to the show."


def test_json_keeps_unicode_and_survives_nan() -> None:
    report = _report([U(0, 1, "音声 ü"), U(math.nan, 2, "x")])
    text = to_json(report)
    assert "音声 ü" in text
    json.loads(text)  # strict JSON: NaN is not allowed, pydantic writes null


def test_markdown_escapes_text_and_orders_sections_and_times() -> None:
    md = to_markdown(_report())
    assert md.startswith("# s3://bucket/in/My \\*great\\* podcast\\_ep\\#1.mp3\n")
    assert "duration 01:02:05" in md
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == [
        "## Summary",
        "## Chapters",
        "## Captions",
        "## Events",
        "## Transcript",
        "## Reasoning",
        "## Files",
    ]
    assert "They \\*agree\\* on \\<everything\\>." in md
    # Chapters and events are sorted by time; pipes cannot break the table.
    assert md.index("**[00:00:00]** Intro \\| models") < md.index(
        "**[01:00:00]** Wrap-up — Goodbyes"
    )
    assert "| 00:00:01 | 00:00:02 | door \\| slam |" in md
    assert md.index("door") < md.index("laughter")
    assert "**[00:00:02]** Today we talk about audio models." in md
    assert "> I hear a low voice.\n> Then a higher one." in md
    assert "**Answer:** Two." in md


def test_markdown_minimal_and_failed_report() -> None:
    report = JobReport(
        job_id="j",
        source="a.wav",
        status="failed",
        error=ErrorInfo(code="bad_audio", message="cannot decode"),
    )
    md = to_markdown(report)
    assert md.startswith("# a.wav\n")
    assert "**Error** (bad\\_audio): cannot decode" in md
    assert "## Transcript" not in md
    assert md.endswith("\n") and not md.endswith("\n\n")


def test_markdown_times_past_99_hours_keep_every_digit() -> None:
    md = to_markdown(_report([U(400_000.0, 400_001.0, "late")]))
    assert "**[111:06:40]** late" in md


def test_render_matches_each_format_and_refuses_unknown_ones() -> None:
    report = _report(NASTY)
    assert set(FORMATS) == {"json", "srt", "vtt", "txt", "md"}
    for name, fmt in FORMATS.items():
        text = render(report, name)
        assert text == fmt.render(report)
        assert fmt.extension == f".{name}"
        assert fmt.content_type
    assert validate_srt(render(report, "srt")) == []
    assert validate_vtt(render(report, "VTT")) == []
    _, extension, content_type = FORMATS["vtt"]
    assert (extension, content_type) == (".vtt", "text/vtt; charset=utf-8")
    with pytest.raises(ValueError, match="unknown export format 'docx'"):
        render(report, "docx")
