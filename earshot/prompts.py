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
    "List every event in the audio with its time: sound events (alarms, sirens, animals, "
    "vehicles, laughter, applause), speech starting or stopping, a speaker change, music "
    "starting or stopping, and a new topic being discussed (write it as: topic: <subject>). "
    "Put each event on its own line with its start and end time in seconds, like: "
    "[3.0 - 7.5] siren. For an instant, give one time, like: [12.0] speaker change."
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
CHAPTER_TITLE = (
    "Here is a summary of one part of a recording. Give this part a short title of at most "
    "eight words. Answer with the title only.\n\n{text}"
)
# Per-segment custom questions: the answer's times must be relative to the clip.
QUESTION_TIMES = " If you mention times, give them in seconds from the start of this audio."

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
    """Grounded events (see ``earshot.grounding``) in the older TimedParse shape."""
    from earshot.grounding import parse_grounding

    grounded = parse_grounding(text, duration_s)
    return TimedParse(
        items=[TimedLine(start=e.start, end=e.end, text=e.label, raw=e.raw) for e in grounded.events],
        dropped=grounded.dropped_count,
        untimed=grounded.untimed,
    )


_TITLE_PREFIX = re.compile(r"^\s*(?:title|chapter(?:\s+\d+)?|part(?:\s+\d+)?)\s*[:\-–]\s*", re.IGNORECASE)


def clean_title(text: str, *, max_chars: int = 80) -> str:
    """The first non-empty line of a title answer, without 'Title:', quotes or markdown."""
    for line in text.splitlines():
        line = _TITLE_PREFIX.sub("", line.strip().lstrip("#*- ").strip())
        prev = None
        while prev != line:
            prev = line
            line = line.strip().strip("\"'`*_").strip().rstrip(".").strip()
        if line:
            if len(line) > max_chars:
                cut = line[:max_chars].rsplit(" ", 1)[0]
                line = (cut or line[:max_chars]).rstrip(",;:") + "…"
            return line
    return ""


_THINK_TAGS = re.compile(r"<think>(.*?)</think>(.*)", re.DOTALL | re.IGNORECASE)
_THINK_OPEN = re.compile(r"<think>(.*)$", re.DOTALL | re.IGNORECASE)
_ANSWER_MARK = re.compile(
    r"^(.*?)(?:\n|^)\s*(?:\*\*)?(?:final answer|answer|conclusion)(?:\*\*)?\s*[:\-](?:\*\*)?\s*(.*)$",
    re.DOTALL | re.IGNORECASE,
)
_REASONING_LABEL = re.compile(r"^\s*(?:reasoning|thinking|thoughts?)\s*[:\-]\s*", re.IGNORECASE)


def split_reasoning(text: str) -> tuple[str, str]:
    """(thinking, answer) from AF3 thinking-mode output; never raises.

    Accepts '<think>..</think> answer', a '<think>' cut off by the token limit (all of it is
    thinking, the answer is empty), and '... Answer: ...' / 'Final answer: ...' markers.
    Anything else is all answer: ('', text).
    """
    m = _THINK_TAGS.search(text)
    if m:
        return m.group(1).strip(), m.group(2).strip()
    m = _THINK_OPEN.search(text)
    if m:
        return m.group(1).strip(), ""
    m = _ANSWER_MARK.match(text)
    if m and m.group(1).strip():
        return _REASONING_LABEL.sub("", m.group(1).strip()), m.group(2).strip()
    return "", text.strip()
