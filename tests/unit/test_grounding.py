"""The grounding parser on realistic and broken answers, absolute times, merging across cuts."""

from __future__ import annotations

import pytest

from earshot import prompts
from earshot.analysis import parse_answers, question_prompts
from earshot.grounding import (
    TimelineEvent,
    absolutize_times,
    event_kind,
    merge_across_cuts,
    parse_grounding,
    parse_time,
)

# (answer line, expected (start, end, label) or None when it must be dropped/untimed)
GOOD: list[tuple[str, tuple[float, float, str]]] = [
    ("[3.0 - 7.5] siren", (3.0, 7.5, "siren")),
    ("- [00:03 - 00:07.5] Dog barking", (3.0, 7.5, "Dog barking")),
    ("1. 12s-15.5s: applause", (12.0, 15.5, "applause")),
    ("From 20 to 25 seconds, a car horn.", (20.0, 25.0, "a car horn")),
    ("A dog barks between 12 and 15 seconds.", (12.0, 15.0, "A dog barks")),
    ("music starts (30.0 - 45)", (30.0, 45.0, "music starts")),
    ("At 12.5s, music starts", (12.5, 12.5, "music starts")),
    ("[40] speaker change", (40.0, 40.0, "speaker change")),
    ("00:00:01,000 --> 00:00:02,500 speech", (1.0, 2.5, "speech")),
    ("alarm: 3.0 – 7.5", (3.0, 7.5, "alarm")),
    ("* **[0:05 to 0:09]** laughter", (5.0, 9.0, "laughter")),
    ("Laughter from 0m 2s to 0m 5s", (2.0, 5.0, "Laughter")),
    ("[55 - 60.3] topic: the budget", (55.0, 60.0, "topic: the budget")),  # end clamped
]
BROKEN: list[tuple[str, str]] = [
    ("[50 - 40] reversed thing", "reversed"),
    ("[10 - 99] past the end", "out_of_range"),
    ("[75] a knock", "out_of_range"),
    ("[1:75 - 2:00] bad clock", "bad_time"),
    ("[5.0 - 6.0]", "no_label"),
]
UNTIMED = ["There are 3 and 4 dogs", "The alarm rings at ten seconds.", "<think>hmm", "ZZZ ### @@"]


@pytest.mark.parametrize(("line", "expected"), GOOD)
def test_each_realistic_event_line_parses_to_one_event(line: str, expected: tuple[float, float, str]) -> None:
    r = parse_grounding(line, 60.0)
    assert r.dropped == [] and r.untimed == []
    assert [(e.start, e.end, e.label) for e in r.events] == [expected]
    assert r.events[0].raw == line.strip()


@pytest.mark.parametrize(("line", "reason"), BROKEN)
def test_drops_and_counts_invalid_lines(line: str, reason: str) -> None:
    r = parse_grounding(line, 60.0)
    assert r.events == []
    assert [(d.raw, d.reason) for d in r.dropped] == [(line, reason)]


def test_whole_answer_keeps_raw_and_counts() -> None:
    lines = [g[0] for g in GOOD] + [b[0] for b in BROKEN] + UNTIMED + ["[3.0 - 7.5] siren"]
    text = "\n".join(lines) + "\n\n"
    r = parse_grounding(text, 60.0)
    assert r.raw == text
    assert len(r.events) == len(GOOD)
    assert r.dropped_count == len(BROKEN)
    assert r.untimed == UNTIMED
    assert r.duplicates == 1  # the repeated siren line
    for e in r.events:
        assert 0.0 <= e.start <= e.end <= 60.0


def test_multiple_events_on_one_line() -> None:
    r = parse_grounding("Speaker 1 talks from 0 to 5 seconds, then a siren from 10 to 20 seconds.", 30)
    assert [(e.start, e.end, e.label) for e in r.events] == [(0, 5, "Speaker 1 talks"), (10, 20, "a siren")]


def test_json_answers_become_events_and_bad_items_are_counted() -> None:
    text = (
        '```json\n[{"start": 1, "end": 2, "event": "bark"}, {"onset": "0:05", "offset": "0:04",'
        ' "label": "x"}, {"label": "no time"}, {"start": "nan", "end": 3, "label": "y"}]\n```'
    )
    r = parse_grounding(text, 60)
    assert [(e.start, e.end, e.label) for e in r.events] == [(1.0, 2.0, "bark")]
    assert sorted(d.reason for d in r.dropped) == ["bad_time", "reversed"]
    assert r.untimed == ['{"label": "no time"}']
    assert parse_grounding('{"events": [{"time": 4, "description": "door slam"}]}', 10).events[0].end == 4.0


@pytest.mark.parametrize(
    "garbage",
    ["", "\n\n", "[", "[[[--]]]", "1:2:3:4:5 - 9", "9" * 400 + " - 1 x", "\x00\x01 - \ufffd", "```", "{not json"],
)
def test_garbage_never_raises(garbage: str) -> None:
    r = parse_grounding(garbage, 30.0)
    assert all(0 <= e.start <= e.end <= 30 for e in r.events)


def test_time_notations_and_event_kinds_are_recognised() -> None:
    assert parse_time("01:02:03.5") == 3723.5
    assert parse_time("00:00:01,500") == 1.5
    assert parse_time("1500ms") == 1.5
    assert parse_time("2m 3s") == 123
    assert event_kind("speaker change") == "speaker_change"
    assert event_kind("music starts") == "music"
    assert event_kind("topic: budget") == "topic"
    assert event_kind("man speaking") == "speech"
    assert event_kind("glass breaks") == "sound"


def test_segment_analysis_gives_absolute_times_and_counts_drops() -> None:
    question = "When does the alarm start?"
    # the custom question asks for clip-relative times, which makes the rewrite below sound
    assert question_prompts([question]) == [question + prompts.QUESTION_TIMES]
    seg = parse_answers(
        duration_s=10.0,
        task_answers={"events": "[1.0 - 2.0] dog barks\n[5 - 3] broken\n[8.0 - 10.0] siren\n[30 - 40] too late"},
        question_answers=[(question, "The alarm starts at 4 s and stops at 0:09.")],
    )
    assert seg.events_dropped == 2
    assert seg.grounding is not None and {d.reason for d in seg.grounding.dropped} == {"reversed", "out_of_range"}
    shifted = seg.shifted(600.0)
    assert [(e.start, e.end, e.label) for e in shifted.events] == [(601.0, 602.0, "dog barks"), (608.0, 610.0, "siren")]
    assert shifted.reasoning[0].answer == "The alarm starts at 604s and stops at 10:09."
    assert "4 s" in shifted.raw[f"q:{question}"]  # the model's words are kept
    assert shifted.reasoning[0].question == question


def test_think_without_adapter_is_noted() -> None:
    answer = [(prompts.THINK_QUESTION, "<think>a dog</think>A dog barks.")]
    seg = parse_answers(duration_s=1.0, task_answers={}, question_answers=answer, thinking=True, adapter=False)
    r = seg.reasoning[0]
    assert (r.thinking, r.answer, r.adapter) == ("a dog", "A dog barks.", False)
    assert seg.notes and "No think adapter" in seg.notes[0]
    with_adapter = parse_answers(
        duration_s=1.0, task_answers={}, question_answers=answer, thinking=True, adapter=True
    )
    assert with_adapter.reasoning[0].adapter is True and with_adapter.notes == []


def test_absolutize_leaves_non_times_alone() -> None:
    text = "At 12 s, 0:40 and [3 - 7]; 3 dogs; a 90 s song; at 1:30 too"
    assert absolutize_times(text, 600, 60) == "At 612s, 10:40 and [603s - 607s]; 3 dogs; a 90 s song; at 1:30 too"
    assert absolutize_times(text, 0, 60) == text


def ev(start: float, end: float, label: str, key: int) -> TimelineEvent:
    return TimelineEvent(start=start, end=end, label=label, raw=f"r{key}", key=key)


def test_merge_event_straddling_a_cut() -> None:
    events = [
        ev(590.0, 599.8, "Siren", 1),
        ev(600.3, 612.0, "siren.", 2),  # same label after normalisation
        ev(595.0, 600.0, "speech", 3),
        ev(600.0, 601.0, "music", 4),  # different label: stays
        ev(300.0, 310.0, "siren", 5),  # far from the cut: stays
    ]
    r = merge_across_cuts(events, cuts=[600.0])
    assert r.merged == 1 and r.merges == [(1, [2])]
    siren = next(e for e in r.events if e.key == 1)
    assert (siren.start, siren.end, siren.raw) == (590.0, 612.0, "r1\nr2")
    assert len(r.events) == 4


def test_merge_chain_over_several_cuts_is_a_fixpoint() -> None:
    events = [ev(550, 600, "rain", 1), ev(600, 1200, "rain", 2), ev(1200.5, 1300, "rain", 3), ev(1400, 1500, "rain", 4)]
    r = merge_across_cuts(events, cuts=[600.0, 1200.0, 1800.0])
    assert r.merges == [(1, [2, 3])]
    assert [(e.start, e.end) for e in r.events] == [(550, 1300), (1400, 1500)]
    again = merge_across_cuts(r.events, cuts=[600.0, 1200.0, 1800.0])
    assert again.merged == 0 and again.events == r.events


def test_no_merge_when_gap_too_big_or_overlap_absent() -> None:
    assert merge_across_cuts([ev(500, 597, "x", 1), ev(603, 650, "x", 2)], cuts=[600]).merged == 0
    assert merge_across_cuts([ev(500, 600, "x", 1)], cuts=[600]).merged == 0
    assert merge_across_cuts([], cuts=[600]).merged == 0


def test_split_reasoning_handles_tags_markers_and_plain_answers() -> None:
    assert prompts.split_reasoning("<think>a\nb</think>\nYes.") == ("a\nb", "Yes.")
    assert prompts.split_reasoning("<think>cut off by the token lim") == ("cut off by the token lim", "")
    assert prompts.split_reasoning("Reasoning: loud bang.\nFinal answer: a door") == ("loud bang.", "a door")
    assert prompts.split_reasoning("just an answer") == ("", "just an answer")


def test_af_think_output_splits_into_the_short_thought_and_the_answer() -> None:
    # AF-Think writes a short thought, then the answer: no tags, no markers
    one_paragraph = (
        "The sound rises and falls at 2.5 s intervals, typical of an emergency vehicle. "
        "The answer is (B) a siren."
    )
    assert prompts.split_reasoning(one_paragraph) == (
        "The sound rises and falls at 2.5 s intervals, typical of an emergency vehicle.",
        "The answer is (B) a siren.",
    )
    paragraphs = "A dog barks twice, then a door closes.\nThe barking stops after it.\n\nA dog barks at a visitor."
    assert prompts.split_reasoning(paragraphs) == (
        "A dog barks twice, then a door closes.\nThe barking stops after it.",
        "A dog barks at a visitor.",
    )
    assert prompts.split_reasoning("A siren.") == ("", "A siren.")


def test_clean_title_strips_labels_quotes_and_headings() -> None:
    assert prompts.clean_title('Title: "The Budget Meeting".\nmore') == "The Budget Meeting"
    assert prompts.clean_title("\n\n## Chapter 2: Opening remarks") == "Opening remarks"
    assert prompts.clean_title("   ") == ""
    assert len(prompts.clean_title("word " * 40)) <= 81
