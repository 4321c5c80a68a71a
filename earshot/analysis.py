"""Per-segment analysis: build the task prompts, ask the engine, parse what comes back.

Engine-independent on purpose: the local and Triton engines return the same text for the
same prompts, so they return the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from earshot import prompts
from earshot.engines.base import Engine
from earshot.grounding import GroundingResult, absolutize_times, parse_grounding
from earshot.results import Event, Reasoning, Utterance


@dataclass
class SegmentAnalysis:
    duration_s: float
    raw: dict[str, str] = field(default_factory=dict)
    transcript: list[Utterance] = field(default_factory=list)
    caption: str | None = None
    events: list[Event] = field(default_factory=list)
    events_dropped: int = 0
    grounding: GroundingResult | None = None
    summary: str | None = None
    reasoning: list[Reasoning] = field(default_factory=list)
    # honest remarks about how results were produced (e.g. no think adapter)
    notes: list[str] = field(default_factory=list)

    def shifted(self, offset_s: float) -> SegmentAnalysis:
        """The same results on the file's timeline (segment start = ``offset_s``).

        Explicit clip-relative times inside answers to questions ("at 12 s") are rewritten
        as file times too; the model's own words stay in ``raw``.
        """
        return SegmentAnalysis(
            duration_s=self.duration_s,
            raw=dict(self.raw),
            transcript=[
                Utterance(start=u.start + offset_s, end=u.end + offset_s, text=u.text)
                for u in self.transcript
            ],
            caption=self.caption,
            events=[
                Event(start=e.start + offset_s, end=e.end + offset_s, label=e.label, raw=e.raw)
                for e in self.events
            ],
            events_dropped=self.events_dropped,
            grounding=self.grounding.shifted(offset_s) if self.grounding else None,
            summary=self.summary,
            reasoning=[
                r.model_copy(update={"answer": absolutize_times(r.answer, offset_s, self.duration_s)})
                for r in self.reasoning
            ],
            notes=list(self.notes),
        )


def question_prompts(questions: Sequence[str]) -> list[str]:
    """Custom questions ask for clip-relative times, which ``shifted`` can make absolute."""
    return [q if q == prompts.THINK_QUESTION else q + prompts.QUESTION_TIMES for q in questions]


def parse_answers(
    *,
    duration_s: float,
    task_answers: dict[str, str],
    question_answers: Sequence[tuple[str, str]] = (),
    thinking: bool = False,
    adapter: bool = False,
) -> SegmentAnalysis:
    """Turn the model's raw answers for one clip into results (times relative to the clip).

    ``task_answers`` maps a task to its answer; ``question_answers`` pairs each question
    (the think question first when thinking) with its answer.
    """
    result = SegmentAnalysis(duration_s=duration_s)
    result.raw.update(task_answers)
    if "transcribe" in result.raw:
        result.transcript = [
            Utterance(start=i.start, end=i.end, text=i.text)
            for i in prompts.parse_transcript(result.raw["transcribe"], duration_s)
        ]
    if "caption" in result.raw:
        result.caption = result.raw["caption"].strip()
    if "events" in result.raw:
        grounded = parse_grounding(result.raw["events"], duration_s)
        result.grounding = grounded
        result.events = [Event(start=e.start, end=e.end, label=e.label, raw=e.raw) for e in grounded.events]
        result.events_dropped = grounded.dropped_count
    if "summarize" in result.raw:
        result.summary = result.raw["summarize"].strip()
    if thinking and not adapter:
        from earshot.af3.think import NO_ADAPTER_NOTE

        result.notes.append(NO_ADAPTER_NOTE)
    for q, a in question_answers:
        trace, answer = prompts.split_reasoning(a) if thinking else ("", a.strip())
        result.reasoning.append(
            Reasoning(question=q, thinking=trace, answer=answer, adapter=thinking and adapter)
        )
        result.raw[f"q:{q}"] = a
    return result


def analyze_audio(
    engine: Engine,
    audio: np.ndarray,
    *,
    tasks: Sequence[str],
    questions: Sequence[str] = (),
    sample_rate: int = 16000,
) -> SegmentAnalysis:
    """Run every requested task on one <= 600 s clip; times are relative to the clip."""
    plain = [t for t in prompts.SEGMENT_TASKS if t in tasks and t != "think"]
    task_answers: dict[str, str] = {}
    if plain:
        answers = engine.generate([prompts.PROMPTS[t] for t in plain], audio=audio)
        task_answers = dict(zip(plain, answers, strict=True))

    thinking = "think" in tasks
    think_questions = ([prompts.THINK_QUESTION] if thinking else []) + list(questions)
    question_answers: list[tuple[str, str]] = []
    if think_questions:
        answers = engine.generate(question_prompts(think_questions), audio=audio, think=thinking)
        question_answers = list(zip(think_questions, answers, strict=True))
    return parse_answers(
        duration_s=float(audio.shape[0]) / sample_rate,
        task_answers=task_answers,
        question_answers=question_answers,
        thinking=thinking,
        adapter=engine.has_think_adapter,
    )
