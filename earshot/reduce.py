"""Hierarchical reduce: segment summaries -> section summaries -> one file summary.

Every LLM call sees at most ``budget_chars`` of child text, so a recording of any length is
summarised with a bounded number of calls, each inside the model's context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from earshot import prompts
from earshot.results import Chapter


@dataclass
class ReduceResult:
    summary: str
    sections: list[Chapter]
    calls: int


def group_parts(parts: Sequence[Chapter], budget_chars: int) -> list[list[Chapter]]:
    """Consecutive groups whose joined text fits the budget (a part alone may exceed it)."""
    groups: list[list[Chapter]] = []
    size = 0
    for part in parts:
        cost = len(part.summary) + 32
        if groups and size + cost <= budget_chars:
            groups[-1].append(part)
            size += cost
        else:
            groups.append([part])
            size = cost
    return groups


def _render(parts: Sequence[Chapter], budget_chars: int) -> str:
    lines = [f"[{p.start:.0f}s - {p.end:.0f}s] {p.summary}" for p in parts]
    return "\n".join(lines)[:budget_chars]


def reduce_summaries(
    parts: Sequence[Chapter],
    complete: Callable[[str], str],
    *,
    budget_chars: int,
    template: str = prompts.REDUCE,
) -> ReduceResult:
    """Reduce ordered parts to one summary; sections are the first level of the tree."""
    level = [p for p in parts if p.summary.strip()]
    if not level:
        return ReduceResult(summary="", sections=[], calls=0)
    calls = 0
    sections: list[Chapter] = []
    while len(level) > 1:
        nxt: list[Chapter] = []
        for group in group_parts(level, budget_chars):
            if len(group) == 1:
                nxt.append(group[0])
                continue
            text = complete(template.format(parts=_render(group, budget_chars))).strip()
            calls += 1
            nxt.append(Chapter(start=group[0].start, end=group[-1].end, title="", summary=text))
        if len(nxt) == len(level):
            # nothing merged (every part is over budget alone): pair them up to make progress
            nxt = []
            for i in range(0, len(level), 2):
                pair = level[i : i + 2]
                if len(pair) == 1:
                    nxt.append(pair[0])
                    continue
                text = complete(template.format(parts=_render(pair, budget_chars))).strip()
                calls += 1
                nxt.append(Chapter(start=pair[0].start, end=pair[-1].end, title="", summary=text))
        if not sections:
            sections = nxt
        level = nxt
    return ReduceResult(summary=level[0].summary, sections=sections, calls=calls)
