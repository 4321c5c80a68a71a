"""Hierarchical reduce: segment summaries -> section summaries -> one file summary.

AF3 hears at most 10 minutes per call, so a long recording is summarised in text, as a tree:

    segments (<= 600 s each, summarised from audio)
      -> sections: consecutive segments grouped into about ``chapter_target_s`` of audio,
         each reduced to one summary and given a title: these are the chapters
      -> one file summary, reduced from the section summaries

Every LLM call is built to fit ``budget_chars`` (prompt text, template included): children
are packed greedily into a call until the budget is full, and a child is clipped to at most
``1 / MIN_FANIN`` of the budget so that every call merges at least ``MIN_FANIN`` children.
The number of calls is therefore bounded (about n / (MIN_FANIN - 1) reduce calls plus one
title per chapter, with at most ``max_chapters`` chapters) whatever the length, and no call
can overflow the model's context. ``complete`` is any ``prompt -> text`` function: the
engine's text-only LLM call in production, a counting fake in tests.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from earshot import prompts
from earshot.grounding import format_time
from earshot.results import Chapter

log = logging.getLogger("earshot.reduce")

# every reduce call merges at least this many children (when there are that many)
MIN_FANIN = 4
# below this many characters of room for children, a budget is unusable
MIN_ROOM_CHARS = 400
_ELLIPSIS = "…"


@dataclass(frozen=True)
class Passage:
    """A stretch of the recording and the text that stands for it: a segment's summary, a
    segment's answer to a question, or a section reduced from several of those."""

    start: float
    end: float
    text: str


@dataclass
class ReduceResult:
    summary: str
    sections: list[Passage]
    calls: int
    prompt_chars: list[int] = field(default_factory=list)


@dataclass
class RecordingSummary:
    """What a long recording reduces to: one summary, titled chapters, the call accounting."""

    summary: str
    sections: list[Passage]
    chapters: list[Chapter]
    calls: int
    prompt_chars: list[int] = field(default_factory=list)


class _Calls:
    """Wraps ``complete``: counts calls, records prompt sizes, enforces the budget."""

    def __init__(self, complete: Callable[[str], str], budget_chars: int) -> None:
        self.complete = complete
        self.budget_chars = budget_chars
        self.sizes: list[int] = []

    @property
    def count(self) -> int:
        return len(self.sizes)

    def __call__(self, prompt: str) -> str:
        if len(prompt) > self.budget_chars:  # construction prevents this; never send it anyway
            log.warning("reduce prompt of %d chars clipped to %d", len(prompt), self.budget_chars)
            prompt = prompt[: self.budget_chars]
        self.sizes.append(len(prompt))
        return self.complete(prompt).strip()


def clip_text(text: str, max_chars: int) -> str:
    """``text`` cut at a word boundary to at most ``max_chars`` characters (ellipsis included)."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    if max_chars <= len(_ELLIPSIS):
        return text[:max_chars]
    cut = text[: max_chars - len(_ELLIPSIS)]
    if " " in cut[len(cut) // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + _ELLIPSIS


def _line(part: Passage, max_chars: int) -> str:
    head = f"[{format_time(part.start, clock=True)} - {format_time(part.end, clock=True)}] "
    return head + clip_text(part.text, max(1, max_chars - len(head)))


def _room(template: str, budget_chars: int) -> int:
    room = budget_chars - len(template.format(parts=""))
    if room < MIN_ROOM_CHARS:
        raise ValueError(
            f"a reduce budget of {budget_chars} chars leaves {room} for the text to reduce; "
            f"raise EARSHOT_REDUCE_BUDGET_CHARS (at least {MIN_ROOM_CHARS} of room is needed)"
        )
    return room


def group_parts(parts: Sequence[Passage], budget_chars: int, *, child_cap: int | None = None) -> list[list[Passage]]:
    """Consecutive groups whose rendered lines (each clipped to ``child_cap``) fit the budget."""
    cap = child_cap if child_cap is not None else max(1, budget_chars // MIN_FANIN)
    groups: list[list[Passage]] = []
    size = 0
    for part in parts:
        cost = len(_line(part, cap)) + 1  # the newline that joins it
        if groups and size + cost <= budget_chars:
            groups[-1].append(part)
            size += cost
        else:
            groups.append([part])
            size = cost
    return groups


def _render(parts: Sequence[Passage], room: int, cap: int) -> str:
    return "\n".join(_line(p, cap) for p in parts)[:room]


def _reduce_level(
    level: list[Passage], calls: _Calls, template: str, room: int, cap: int
) -> list[Passage]:
    nxt: list[Passage] = []
    for group in group_parts(level, room, child_cap=cap):
        if len(group) == 1:
            nxt.append(group[0])
            continue
        rendered = _render(group, room, cap)
        text = calls(template.format(parts=rendered)) or _fallback(group, cap)
        nxt.append(Passage(start=group[0].start, end=group[-1].end, text=text))
    return nxt


def _fallback(group: Sequence[Passage], cap: int) -> str:
    """The model returned nothing: keep the children's own words rather than lose them."""
    log.warning("empty reduce answer; keeping the children's text")
    return clip_text(" ".join(p.text for p in group), cap)


def _reduce(parts: Sequence[Passage], calls: _Calls, *, template: str) -> tuple[str, list[Passage]]:
    level = [p for p in parts if p.text.strip()]
    if not level:
        return "", []
    room = _room(template, calls.budget_chars)
    cap = max(1, room // MIN_FANIN - 1)
    sections: list[Passage] = []
    while len(level) > 1:
        level = _reduce_level(level, calls, template, room, cap)
        if not sections:
            sections = list(level)
    return level[0].text, sections


def reduce_summaries(
    parts: Sequence[Passage],
    complete: Callable[[str], str],
    *,
    budget_chars: int,
    template: str = prompts.REDUCE,
) -> ReduceResult:
    """Reduce ordered parts to one summary; sections are the first level of the tree.

    ``template`` has one ``{parts}`` field; every prompt sent is at most ``budget_chars``.
    """
    calls = _Calls(complete, budget_chars)
    summary, sections = _reduce(parts, calls, template=template)
    return ReduceResult(summary=summary, sections=sections, calls=calls.count, prompt_chars=calls.sizes)


def chapter_count(duration_s: float, n_parts: int, *, target_s: float, max_chapters: int) -> int:
    """How many chapters: one per ``target_s`` of audio, at least 1, at most ``max_chapters``."""
    if n_parts <= 0:
        return 0
    wanted = max(1, round(duration_s / target_s)) if target_s > 0 else 1
    return max(1, min(wanted, max_chapters, n_parts))


def plan_chapters(
    parts: Sequence[Passage], *, duration_s: float, target_s: float, max_chapters: int
) -> list[list[Passage]]:
    """Split ordered parts into contiguous groups of about equal duration (chapter bodies)."""
    n = chapter_count(duration_s, len(parts), target_s=target_s, max_chapters=max_chapters)
    if n == 0:
        return []
    total = duration_s if duration_s > 0 else parts[-1].end - parts[0].start
    origin = parts[0].start
    cuts: list[int] = []
    prev = 0
    for k in range(1, n):
        ideal = origin + total * k / n
        lo, hi = prev + 1, len(parts) - (n - k)
        best = min(range(lo, hi + 1), key=lambda i: (abs(parts[i].start - ideal), i))
        cuts.append(best)
        prev = best
    bounds = [0, *cuts, len(parts)]
    return [list(parts[a:b]) for a, b in itertools.pairwise(bounds)]


def summarize_recording(
    parts: Sequence[Passage],
    complete: Callable[[str], str],
    *,
    duration_s: float,
    budget_chars: int,
    chapter_target_s: float = 900.0,
    max_chapters: int = 12,
) -> RecordingSummary:
    """Segment summaries -> titled chapters (sections) -> one file summary.

    Calls: the reduce calls inside each chapter, one title per chapter (at most
    ``max_chapters``), then the reduce calls over the chapter summaries.
    """
    calls = _Calls(complete, budget_chars)
    usable = [p for p in parts if p.text.strip()]
    if not usable:
        return RecordingSummary(summary="", sections=[], chapters=[], calls=0)
    title_room = budget_chars - len(prompts.CHAPTER_TITLE.format(text=""))
    if title_room < MIN_ROOM_CHARS:
        raise ValueError(f"a budget of {budget_chars} chars is too small for a chapter title prompt")

    sections: list[Passage] = []
    chapters: list[Chapter] = []
    groups = plan_chapters(usable, duration_s=duration_s, target_s=chapter_target_s, max_chapters=max_chapters)
    for k, group in enumerate(groups):
        body, _ = _reduce(group, calls, template=prompts.REDUCE)
        start = 0.0 if k == 0 else group[0].start
        end = duration_s if k == len(groups) - 1 and duration_s > 0 else group[-1].end
        sections.append(Passage(start=start, end=end, text=body))
        title = prompts.clean_title(calls(prompts.CHAPTER_TITLE.format(text=clip_text(body, title_room))))
        chapters.append(Chapter(start=start, end=end, title=title or f"Part {k + 1}", summary=body))

    summary, _ = _reduce(sections, calls, template=prompts.REDUCE)
    return RecordingSummary(
        summary=summary, sections=sections, chapters=chapters, calls=calls.count, prompt_chars=calls.sizes
    )


def call_bound(n_parts: int, *, max_chapters: int) -> int:
    """An upper bound on the calls :func:`summarize_recording` makes for ``n_parts`` parts.

    Each reduce call merges >= MIN_FANIN children except possibly the last of a level, so a
    tree over m leaves takes at most (m - 1) / (MIN_FANIN - 1) + levels calls.
    """

    def tree(m: int) -> int:
        if m <= 1:
            return 0
        levels = math.ceil(math.log(m, MIN_FANIN)) + 1
        return math.ceil((m - 1) / (MIN_FANIN - 1)) + levels

    n_ch = min(max_chapters, n_parts)
    per_chapter = math.ceil(n_parts / max(1, n_ch))
    return n_ch * tree(per_chapter) + n_ch + tree(n_ch)
