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


def analyze_audio(
    engine: Engine,
    audio: np.ndarray,
    *,
    tasks: Sequence[str],
    questions: Sequence[str] = (),
    sample_rate: int = 16000,
) -> SegmentAnalysis:
    """Run every requested task on one <= 600 s clip; times are relative to the clip."""
    duration = float(audio.shape[0]) / sample_rate
    result = SegmentAnalysis(duration_s=duration)
    plain = [t for t in prompts.SEGMENT_TASKS if t in tasks and t != "think"]
    if plain:
        answers = engine.generate([prompts.PROMPTS[t] for t in plain], audio=audio)
        result.raw.update(zip(plain, answers, strict=True))

    if "transcribe" in result.raw:
        result.transcript = [
            Utterance(start=i.start, end=i.end, text=i.text)
            for i in prompts.parse_transcript(result.raw["transcribe"], duration)
        ]
    if "caption" in result.raw:
        result.caption = result.raw["caption"].strip()
    if "events" in result.raw:
        grounded = parse_grounding(result.raw["events"], duration)
        result.grounding = grounded
        result.events = [Event(start=e.start, end=e.end, label=e.label, raw=e.raw) for e in grounded.events]
        result.events_dropped = grounded.dropped_count
    if "summarize" in result.raw:
        result.summary = result.raw["summarize"].strip()

    think_questions = ([prompts.THINK_QUESTION] if "think" in tasks else []) + list(questions)
    if think_questions:
        thinking = "think" in tasks
        if thinking and not engine.has_think_adapter:
            from earshot.af3.think import NO_ADAPTER_NOTE

            result.notes.append(NO_ADAPTER_NOTE)
        asked = [q if q == prompts.THINK_QUESTION else q + prompts.QUESTION_TIMES for q in think_questions]
        answers = engine.generate(asked, audio=audio, think=thinking)
        for q, a in zip(think_questions, answers, strict=True):
            trace, answer = prompts.split_reasoning(a) if thinking else ("", a.strip())
            result.reasoning.append(
                Reasoning(
                    question=q,
                    thinking=trace,
                    answer=answer,
                    adapter=thinking and engine.has_think_adapter,
                )
            )
            result.raw[f"q:{q}"] = a
    return result
