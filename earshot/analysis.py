"""Per-segment analysis: build the task prompts, ask the engine once, parse what comes back.

Transcription asks AF3 the way it was trained: "Transcribe the input speech." once per speech
chunk (<= 30 s, found by silero-vad), one utterance per sentence of its answer, timed from the
chunk's voice-activity regions (earshot/sentences.py). Captions,
events, summaries, thinking and questions are asked about the whole <= 600 s segment. All of
a segment's prompts and audios go to the engine in one call, so it can batch them; a silent
segment that only needs a transcript costs no model call at all.

Engine-independent on purpose: the local and Triton engines return the same text for the
same prompts, so they return the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from earshot import budgets, prompts
from earshot.audio.vad import SpeechChunk, VadOptions, chunk_samples, speech_chunks
from earshot.config import Settings
from earshot.engines.base import Ask, Engine, Generation
from earshot.grounding import GroundingResult, absolutize_times, parse_grounding
from earshot.results import Event, Reasoning, Utterance
from earshot.sentences import place_sentences

NO_ADAPTER_NOTE = (
    "No think adapter is loaded for this model: the answer comes from the base model given "
    "the think prompt suffix only, and any reasoning text is not AF3's trained thinking mode."
)


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
    # answers cut by their token limit, by task
    truncated: dict[str, int] = field(default_factory=dict)
    # model calls (engine.generate) and prompts this segment cost; seconds sent to transcription
    calls: int = 0
    prompts: int = 0
    transcribed_s: float = 0.0
    # honest remarks about how results were produced (no think adapter, cut answers)
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
            truncated=dict(self.truncated),
            calls=self.calls,
            prompts=self.prompts,
            transcribed_s=self.transcribed_s,
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
    transcript: Sequence[tuple[SpeechChunk, str]] = (),
    thinking: bool = False,
    adapter: bool = False,
) -> SegmentAnalysis:
    """Turn the model's raw answers for one clip into results (times relative to the clip).

    ``task_answers`` maps a task to its answer; ``question_answers`` pairs each question
    (the think question first when thinking) with its answer; ``transcript`` pairs each
    speech chunk with its ASR answer (one utterance per sentence, earshot.sentences).
    """
    result = SegmentAnalysis(duration_s=duration_s)
    result.raw.update(task_answers)
    if transcript:
        result.raw["transcribe"] = "\n".join(
            f"[{c.start:.2f} - {c.end:.2f}] {text}" for c, text in transcript
        )
    for chunk, text in transcript:
        for start, end, sentence in place_sentences(chunk, prompts.strip_transcript(text)):
            result.transcript.append(Utterance(start=start, end=end, text=sentence))
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
        result.notes.append(NO_ADAPTER_NOTE)
    for q, a in question_answers:
        trace, answer = prompts.split_reasoning(a) if thinking else ("", a.strip())
        result.reasoning.append(
            Reasoning(question=q, thinking=trace, answer=answer, adapter=thinking and adapter)
        )
        result.raw[f"q:{q}"] = a
    return result


def vad_options(settings: Settings) -> VadOptions:
    return VadOptions(
        threshold=settings.vad_threshold,
        max_chunk_s=settings.vad_max_chunk_s,
        max_gap_s=settings.vad_max_gap_s,
    )


def analyze_audio(
    engine: Engine,
    audio: np.ndarray,
    *,
    tasks: Sequence[str],
    questions: Sequence[str] = (),
    settings: Settings,
    sample_rate: int = 16000,
) -> SegmentAnalysis:
    """Run every requested task on one <= 600 s clip in one engine call; times are clip-relative."""
    duration = float(audio.shape[0]) / sample_rate
    asks: list[Ask] = []
    labels: list[str] = []  # the budget task of each ask, for counting cut answers

    plain = [t for t in prompts.SEGMENT_TASKS if t in tasks and t not in ("transcribe", "think")]
    for task in plain:
        asks.append(Ask(prompts.PROMPTS[task], audio=0, max_new_tokens=budgets.budget(task, clip_s=duration, settings=settings)))
        labels.append(task)

    thinking = "think" in tasks
    think_questions = ([prompts.THINK_QUESTION] if thinking else []) + list(questions)
    limit = budgets.budget("question", clip_s=duration, settings=settings)
    for q in question_prompts(think_questions):
        asks.append(Ask(q, audio=0, max_new_tokens=limit, think=thinking))
        labels.append("think" if thinking else "question")

    audios: list[np.ndarray] = [audio] if asks else []
    chunks: list[SpeechChunk] = []
    if "transcribe" in tasks:
        chunks = speech_chunks(audio, options=vad_options(settings), sample_rate=sample_rate)
        for chunk in chunks:
            asks.append(
                Ask(
                    prompts.TRANSCRIBE,
                    audio=len(audios),
                    max_new_tokens=budgets.budget(
                        "transcribe", clip_s=chunk.duration_s, speech_s=chunk.speech_s, settings=settings
                    ),
                )
            )
            audios.append(chunk_samples(audio, chunk, sample_rate))
            labels.append("transcribe")

    answers: list[Generation] = engine.generate(asks, audios=audios) if asks else []
    n_plain, n_questions = len(plain), len(think_questions)
    result = parse_answers(
        duration_s=duration,
        task_answers={t: g.text for t, g in zip(plain, answers[:n_plain], strict=True)},
        question_answers=[
            (q, g.text)
            for q, g in zip(think_questions, answers[n_plain : n_plain + n_questions], strict=True)
        ],
        transcript=[(c, g.text) for c, g in zip(chunks, answers[n_plain + n_questions :], strict=True)],
        thinking=thinking,
        adapter=thinking and engine.has_think_adapter,
    )
    result.calls, result.prompts = (1 if asks else 0), len(asks)
    result.transcribed_s = round(sum(c.duration_s for c in chunks), 3)
    for label, g in zip(labels, answers, strict=True):
        budgets.count(label, truncated=g.truncated)
        if g.truncated:
            result.truncated[label] = result.truncated.get(label, 0) + 1
    if result.truncated:
        result.notes.append(budgets.truncation_note(result.truncated))
    return result
