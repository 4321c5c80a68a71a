"""The long-audio reduce: bounded calls, every prompt inside the budget, one summary + chapters.

The reducer's own logic is tested with an injected counting ``complete``: running three hours
of audio through a model on CPU would test nothing more about call counts or budgets.
"""

from __future__ import annotations

import pytest

from earshot import prompts
from earshot.reduce import (
    Passage,
    call_bound,
    chapter_count,
    clip_text,
    plan_chapters,
    reduce_summaries,
    summarize_recording,
)

THREE_HOURS = 3 * 3600.0


class CountingLLM:
    """A fake text-only LLM: records every prompt, answers with text of a realistic size."""

    def __init__(self, answer_chars: int = 1000) -> None:
        self.prompts: list[str] = []
        self.answer_chars = answer_chars

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        n = len(self.prompts)
        if prompt.startswith(prompts.CHAPTER_TITLE.split("{")[0]):
            return f"Title: Topic number {n}\n"
        return (f"summary {n} " + "lorem ipsum dolor sit amet " * 100)[: self.answer_chars]


def segment_parts(duration_s: float, segment_s: float, summary_chars: int) -> list[Passage]:
    parts = []
    start = 0.0
    i = 0
    while start < duration_s:
        end = min(duration_s, start + segment_s)
        parts.append(Passage(start=start, end=end, text=(f"segment {i} " + "word " * 2000)[:summary_chars]))
        start, i = end, i + 1
    return parts


@pytest.mark.parametrize(
    ("segment_s", "summary_chars", "budget"),
    [
        (600.0, 1000, 12000),  # the production shape: 18 segments of 10 minutes
        (60.0, 1000, 12000),  # EARSHOT_MAX_SEGMENT_S=60: 180 segments
        (600.0, 9000, 12000),  # runaway segment summaries, clipped to fit
        (30.0, 300, 3000),  # a small model context: 360 segments, tight budget
    ],
)
def test_three_hours_bounded_calls_within_budget(segment_s: float, summary_chars: int, budget: int) -> None:
    parts = segment_parts(THREE_HOURS, segment_s, summary_chars)
    llm = CountingLLM()
    out = summarize_recording(
        parts, llm, duration_s=THREE_HOURS, budget_chars=budget, chapter_target_s=900, max_chapters=12
    )
    # every call inside the context budget, and as many calls as the result says
    assert llm.prompts and max(len(p) for p in llm.prompts) <= budget
    assert out.calls == len(llm.prompts) == len(out.prompt_chars)
    # bounded: far fewer calls than segments once there are many, and under the stated bound
    assert out.calls <= call_bound(len(parts), max_chapters=12)
    assert out.calls <= 12 + len(parts) // 2 + 8
    # one summary with 12 chapters covering the file in order
    assert out.summary
    assert len(out.chapters) == 12
    assert out.chapters[0].start == 0.0 and out.chapters[-1].end == THREE_HOURS
    starts = [c.start for c in out.chapters]
    assert starts == sorted(starts) and len(set(starts)) == 12
    for a, b in zip(out.chapters, out.chapters[1:], strict=False):
        assert a.end == b.start
    assert all(c.title.startswith("Topic number") for c in out.chapters)
    assert all(c.summary for c in out.chapters)
    # sections are the chapters' bodies (the middle level of the tree)
    assert [(s.start, s.end, s.text) for s in out.sections] == [(c.start, c.end, c.summary) for c in out.chapters]


def test_the_summary_is_the_final_reduce_answer() -> None:
    parts = segment_parts(THREE_HOURS, 600.0, 1000)
    llm = CountingLLM()
    out = summarize_recording(parts, llm, duration_s=THREE_HOURS, budget_chars=12000)
    last_prompt = llm.prompts[-1]
    assert last_prompt.startswith(prompts.REDUCE.split("{")[0])
    assert out.summary.startswith(f"summary {len(llm.prompts)} ")


def test_chapter_titles_are_bounded_in_number() -> None:
    twelve_hours = segment_parts(12 * 3600.0, 600.0, 500)
    llm = CountingLLM()
    out = summarize_recording(twelve_hours, llm, duration_s=12 * 3600.0, budget_chars=12000, max_chapters=12)
    titles = [p for p in llm.prompts if p.startswith(prompts.CHAPTER_TITLE.split("{")[0])]
    assert len(titles) == len(out.chapters) == 12


def test_short_recording_one_chapter_no_reduce_call() -> None:
    parts = [Passage(start=0.0, end=95.0, text="A short talk about bees.")]
    llm = CountingLLM()
    out = summarize_recording(parts, llm, duration_s=95.0, budget_chars=12000)
    assert out.summary == "A short talk about bees."
    assert len(out.chapters) == 1 and out.chapters[0].start == 0.0 and out.chapters[0].end == 95.0
    assert out.calls == 1  # the title only


def test_empty_answers_fall_back_to_the_children() -> None:
    parts = segment_parts(1800.0, 600.0, 200)
    out = summarize_recording(parts, lambda p: "  ", duration_s=1800.0, budget_chars=12000, chapter_target_s=1800)
    assert out.summary.startswith("segment 0")
    assert out.chapters[0].title == "Part 1"


def test_blank_summaries_make_no_calls_and_an_empty_summary() -> None:
    out = summarize_recording([Passage(start=0, end=5, text=" ")], CountingLLM(), duration_s=5, budget_chars=5000)
    assert (out.summary, out.chapters, out.calls) == ("", [], 0)


def test_budget_too_small_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="REDUCE_BUDGET"):
        reduce_summaries(segment_parts(1200, 600, 100), CountingLLM(), budget_chars=300)


def test_question_answers_reduce_within_budget() -> None:
    template = prompts.REDUCE_ANSWERS.replace("{question}", "When does the alarm start?")
    parts = segment_parts(THREE_HOURS, 600.0, 1500)
    llm = CountingLLM()
    r = reduce_summaries(parts, llm, budget_chars=4000, template=template)
    assert r.calls == len(llm.prompts) and max(len(p) for p in llm.prompts) <= 4000
    assert all("When does the alarm start?" in p for p in llm.prompts)
    assert r.summary


def test_plan_chapters_balanced_and_contiguous() -> None:
    parts = segment_parts(THREE_HOURS, 600.0, 10)
    groups = plan_chapters(parts, duration_s=THREE_HOURS, target_s=900, max_chapters=12)
    assert len(groups) == 12
    assert [p for g in groups for p in g] == parts
    assert {len(g) for g in groups} <= {1, 2}
    assert chapter_count(100.0, 1, target_s=900, max_chapters=12) == 1
    assert chapter_count(THREE_HOURS, 5, target_s=900, max_chapters=12) == 5
    assert chapter_count(0.0, 0, target_s=900, max_chapters=12) == 0


def test_clip_text_folds_whitespace_and_ends_with_an_ellipsis() -> None:
    assert clip_text("a  b\nc", 10) == "a b c"
    clipped = clip_text("word " * 100, 50)
    assert len(clipped) <= 50 and clipped.endswith("…")
