"""Task prompts and the parsers of model output.

Timestamps from AF3 are generated text, not alignment: every parser here tolerates garbage,
keeps the raw text, and validates times against the segment's length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TASKS = ("transcribe", "caption", "events", "summarize", "think", "speak")
# Tasks answered per segment by the model; "speak" is done once per file at the end.
SEGMENT_TASKS = ("transcribe", "caption", "events", "summarize", "think")

TRANSCRIBE = (
    "Transcribe the input speech. Put each sentence on its own line, starting with its start "
    "and end time in seconds, like: [12.0 - 15.5] sentence."
)
CAPTION = "Describe the audio in one sentence."
EVENTS = (
    "List every sound event in the audio, such as speech, a speaker change, music starting or "
    "stopping, alarms, sirens, animals, vehicles, laughter or applause. Put each event on its "
    "own line with its start and end time in seconds, like: [3.0 - 7.5] siren."
)
SUMMARIZE = "Summarize the content of the audio in a few sentences."
THINK_QUESTION = "What is happening in this audio? Explain what you hear."
REDUCE = (
    "Here are summaries of consecutive parts of one recording, in order. Write one coherent "
    "summary of the whole recording.\n\n{parts}"
)
REDUCE_ANSWERS = (
    'The question "{question}" was answered for consecutive parts of one recording. Combine '
    "the answers into one answer for the whole recording.\n\n{parts}"
)
CHAPTER_TITLE = "Give a short title (at most eight words) for this part of a recording:\n\n{text}"

PROMPTS = {
    "transcribe": TRANSCRIBE,
    "caption": CAPTION,
    "events": EVENTS,
    "summarize": SUMMARIZE,
    "think": THINK_QUESTION,
}

# A time is seconds ("12", "12.5", "12.5s") or a clock ("1:02", "01:02:03.5").
_TIME = r"(\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?|\d+(?:\.\d+)?)\s*(?:s|sec|secs|seconds)?"
_SEP = r"\s*(?:-|–|—|to|-->|~|,)\s*"
_RANGE = re.compile(
    r"^\s*(?:[-*•]\s*)?(?:from\s+)?[\[(]?\s*" + _TIME + _SEP + _TIME + r"\s*[\])]?\s*[:,.\-–]?\s*(.*)$",
    re.IGNORECASE,
)
_TOLERANCE_S = 0.5


def parse_time(text: str) -> float:
    """Seconds from '12.5', '1:02' or '01:02:03.5'."""
    parts = text.split(":")
    value = 0.0
    for part in parts:
        value = value * 60 + float(part)
    return value


@dataclass
class TimedLine:
    start: float
    end: float
    text: str
    raw: str


@dataclass
class TimedParse:
    items: list[TimedLine] = field(default_factory=list)
    dropped: int = 0
    untimed: list[str] = field(default_factory=list)


def parse_timed_lines(text: str, duration_s: float) -> TimedParse:
    """Lines like '[3.0 - 7.5] siren'. Reversed or out-of-range times are dropped and counted."""
    result = TimedParse()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        m = _RANGE.match(line)
        if not m:
            result.untimed.append(line)
            continue
        try:
            start, end = parse_time(m.group(1)), parse_time(m.group(2))
        except ValueError:
            result.dropped += 1
            continue
        label = m.group(3).strip().strip("\"'").strip()
        if end < start or start < 0 or start > duration_s + _TOLERANCE_S or end > duration_s + _TOLERANCE_S:
            result.dropped += 1
            continue
        result.items.append(
            TimedLine(start=start, end=min(end, duration_s), text=label, raw=line)
        )
    return result


def parse_transcript(text: str, duration_s: float) -> list[TimedLine]:
    """Timed lines when the model gave them; otherwise the whole answer spans the segment."""
    parsed = parse_timed_lines(text, duration_s)
    items = [i for i in parsed.items if i.text]
    if items:
        return items
    whole = " ".join(text.split())
    return [TimedLine(start=0.0, end=duration_s, text=whole, raw=text)] if whole else []


def parse_events(text: str, duration_s: float) -> TimedParse:
    parsed = parse_timed_lines(text, duration_s)
    parsed.items = [i for i in parsed.items if i.text]
    return parsed


_THINK_TAGS = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL | re.IGNORECASE)
_ANSWER_MARK = re.compile(r"^(.*?)(?:\n|^)\s*(?:final answer|answer)\s*[:\-]\s*(.*)$", re.DOTALL | re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """(thinking, answer) from '<think>..</think> answer' or '... Answer: ...'; else ('', text)."""
    m = _THINK_TAGS.search(text)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    m = _ANSWER_MARK.match(text)
    if m and m.group(1).strip():
        return m.group(1).strip(), m.group(2).strip()
    return "", text.strip()
