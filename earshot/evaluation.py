"""Score an AF3 checkpoint on held-out golden-corpus windows: words, event times, labels.

Each window of a corpus split (``earshot.corpus``) is encoded once and asked what Earshot asks
in production: the transcription prompt (speech windows), the events prompt (windows with sound
events, and event-only windows), the caption prompt, and "Which number was said?" where exactly
one number was spoken. Answers go through the same parsers the pipeline uses
(``earshot.prompts.strip_transcript``, ``earshot.grounding.parse_grounding``).

Metrics:
- WER: word edits / reference words over all speech windows of a split (lower-case, no
  punctuation), per split; utterances = reference sentences scored.
- Events: each true event is paired with the predicted event that overlaps it most (any label);
  onset/offset MAE over paired events; label accuracy = true events whose pair has the right
  label (a missed event counts as wrong); false positives = predicted events paired with none.
- Caption label accuracy: the set of sound labels (and "speech") a caption names equals the truth.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from earshot.config import Settings
from earshot.corpus.generate import read_truth
from earshot.corpus.grammar import normalize_words
from earshot.corpus.scenes import ASR_PROMPT, NUMBER_PROMPT, Event, Scene, caption, caption_labels

ANSWER_TOKENS = 200  # a 30 s transcript of this corpus is ~100 tokens; never the limit for a working model


@dataclass
class WindowResult:
    id: str
    split: str
    voice: str | None
    reference: str = ""
    hypothesis: str = ""
    word_errors: int = 0
    words: int = 0
    utterances: int = 0
    events_true: list[dict[str, Any]] = field(default_factory=list)
    events_pred: list[dict[str, Any]] = field(default_factory=list)
    caption_true: str = ""
    caption_pred: str = ""
    number_true: str | None = None
    number_pred: str | None = None
    truncated: int = 0


@dataclass
class SplitScore:
    split: str
    windows: int
    utterances: int
    words: int
    wer: float | None
    events: int
    events_paired: int
    onset_mae_s: float | None
    offset_mae_s: float | None
    event_label_accuracy: float | None
    event_false_positives: int
    captions: int
    caption_label_accuracy: float | None
    numbers: int
    number_accuracy: float | None
    truncated_answers: int


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) on normalised words."""
    import jiwer

    ref = " ".join(normalize_words(reference))
    hyp = " ".join(normalize_words(hypothesis))
    if not ref:
        return len(hyp.split()), 0
    out = jiwer.process_words(ref, hyp if hyp else "")
    return out.substitutions + out.deletions + out.insertions, len(ref.split())


def pair_events(truth: Sequence[Event], predicted: Sequence[Event]) -> list[tuple[Event, Event | None]]:
    """Each true event with the predicted event overlapping it most (None when none overlaps)."""
    pairs: list[tuple[Event, Event | None]] = []
    for t in truth:
        best, best_overlap = None, 0.0
        for p in predicted:
            overlap = min(t.end, p.end) - max(t.start, p.start)
            if overlap > best_overlap:
                best, best_overlap = p, overlap
        pairs.append((t, best))
    return pairs


def _load(path: Path) -> np.ndarray:
    audio, rate = sf.read(str(path), dtype="float32", always_2d=False)
    if rate != 16000:
        raise ValueError(f"{path}: expected 16 kHz, got {rate}")
    return np.asarray(audio, dtype=np.float32)


def score_window(engine: Any, scene: Scene, audio: np.ndarray, *, split: str) -> WindowResult:
    from earshot import prompts
    from earshot.engines.base import Ask
    from earshot.grounding import parse_grounding

    asks: list[tuple[str, Ask]] = []
    if scene.utterances:
        asks.append(("asr", Ask(ASR_PROMPT, audio=0, max_new_tokens=ANSWER_TOKENS)))
    if scene.events or not scene.utterances:
        asks.append(("events", Ask(prompts.EVENTS, audio=0, max_new_tokens=ANSWER_TOKENS)))
    asks.append(("caption", Ask(prompts.CAPTION, audio=0, max_new_tokens=64)))
    numbers = [u.number for u in scene.utterances if u.number]
    if len(numbers) == 1:
        asks.append(("number", Ask(NUMBER_PROMPT, audio=0, max_new_tokens=16)))
    gens = engine.generate([a for _, a in asks], audios=[audio])
    res = WindowResult(id=scene.id, split=split, voice=scene.voice)
    for (task, _), gen in zip(asks, gens, strict=True):
        res.truncated += int(getattr(gen, "stop", "eos") == "length")
        if task == "asr":
            res.reference = scene.transcript
            res.hypothesis = prompts.strip_transcript(gen.text)
            res.word_errors, res.words = word_errors(res.reference, res.hypothesis)
            res.utterances = len(scene.utterances)
        elif task == "events":
            grounded = parse_grounding(gen.text, scene.duration)
            res.events_true = [asdict(e) for e in scene.events]
            res.events_pred = [{"start": e.start, "end": e.end, "label": e.label} for e in grounded.events]
        elif task == "caption":
            res.caption_true = caption(scene)
            res.caption_pred = gen.text.strip()
        else:
            res.number_true = numbers[0]
            res.number_pred = gen.text.strip()
    return res


def summarize(split: str, results: Sequence[WindowResult]) -> SplitScore:
    words = sum(r.words for r in results)
    errors = sum(r.word_errors for r in results)
    onset: list[float] = []
    offset: list[float] = []
    labels_ok = events = fp = 0
    for r in results:
        truth = [Event(**e) for e in r.events_true]
        pred = [Event(**e) for e in r.events_pred]
        events += len(truth)
        used: set[int] = set()
        for t, p in pair_events(truth, pred):
            if p is None:
                continue
            used.add(id(p))
            onset.append(abs(p.start - t.start))
            offset.append(abs(p.end - t.end))
            labels_ok += int(p.label.strip().lower() == t.label)
        fp += sum(1 for p in pred if id(p) not in used)
    captioned = [r for r in results if r.caption_true]
    cap_ok = sum(caption_labels(r.caption_pred) == caption_labels(r.caption_true) for r in captioned)
    numbered = [r for r in results if r.number_true]
    num_ok = sum(
        bool(r.number_pred) and normalize_words(r.number_pred or "") == normalize_words(r.number_true or "")
        for r in numbered
    )
    return SplitScore(
        split=split,
        windows=len(results),
        utterances=sum(r.utterances for r in results),
        words=words,
        wer=errors / words if words else None,
        events=events,
        events_paired=len(onset),
        onset_mae_s=float(np.mean(onset)) if onset else None,
        offset_mae_s=float(np.mean(offset)) if offset else None,
        event_label_accuracy=labels_ok / events if events else None,
        event_false_positives=fp,
        captions=len(captioned),
        caption_label_accuracy=cap_ok / len(captioned) if captioned else None,
        numbers=len(numbered),
        number_accuracy=num_ok / len(numbered) if numbered else None,
        truncated_answers=sum(r.truncated for r in results),
    )


def load_engine(model_dir: str | Path, *, settings: Settings) -> Any:
    """A local engine on ``model_dir`` (CPU unless settings say otherwise)."""
    from earshot.engines.local import LocalEngine

    return LocalEngine.from_settings(settings.model_copy(update={"model_path": str(model_dir)}))


def evaluate(
    engine: Any,
    split_dirs: Sequence[str | Path],
    *,
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Score every window of each split directory; returns the table and per-window results."""
    t0 = time.monotonic()
    scores: list[SplitScore] = []
    windows: list[WindowResult] = []
    for d in split_dirs:
        root = Path(d)
        split = root.name
        scenes = read_truth(root)[:limit] if limit else read_truth(root)
        results = []
        for i, scene in enumerate(scenes):
            index = int(scene.id.rsplit("-", 1)[1])
            audio = _load(root / "clips" / f"w{index:05d}.wav")
            results.append(score_window(engine, scene, audio, split=split))
            if progress and (i + 1) % 10 == 0:
                progress(f"{split}: {i + 1}/{len(scenes)} windows")
        scores.append(summarize(split, results))
        windows.extend(results)
    return {
        "model": getattr(engine, "model_id", ""),
        "seconds": round(time.monotonic() - t0, 1),
        "splits": [asdict(s) for s in scores],
        "windows": [asdict(w) for w in windows],
    }


def table_markdown(report: dict[str, Any]) -> str:
    def fmt(v: Any, pct: bool = False) -> str:
        if v is None:
            return "-"
        if pct:
            return f"{100 * v:.1f} %"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [
        "| split | windows | utterances | WER | events | onset MAE (s) | offset MAE (s) | event labels | "
        "false pos. | caption labels | number |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in report["splits"]:
        lines.append(
            f"| {s['split']} | {s['windows']} | {s['utterances']} | {fmt(s['wer'], True)} | {s['events']} | "
            f"{fmt(s['onset_mae_s'])} | {fmt(s['offset_mae_s'])} | {fmt(s['event_label_accuracy'], True)} | "
            f"{s['event_false_positives']} | {fmt(s['caption_label_accuracy'], True)} | "
            f"{fmt(s['number_accuracy'], True)} |"
        )
    return "\n".join(lines) + "\n"


def write_report(
    report: dict[str, Any], json_path: str | Path, *, extra: dict[str, Any] | None = None
) -> Path:
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {**(extra or {}), **{k: v for k, v in report.items() if k != "windows"}}
    out.write_text(json.dumps(data, indent=1) + "\n")
    out.with_suffix(".md").write_text(table_markdown(report))
    return out


@dataclass
class FileScore:
    """One file through Earshot's own analysis (speech chunks, events on the clip)."""

    transcript: list[tuple[float, float, str]]
    events: list[tuple[float, float, str]]
    caption: str | None
    reference: str
    word_errors: int
    words: int
    event_pairs: list[tuple[dict[str, Any], dict[str, Any] | None]]

    @property
    def wer(self) -> float | None:
        return self.word_errors / self.words if self.words else None


def score_file(
    engine: Any,
    audio: np.ndarray,
    truth: Any,
    *,
    settings: Settings,
    tasks: Sequence[str] = ("transcribe", "caption", "events"),
) -> FileScore:
    """Run ``earshot.analysis.analyze_audio`` (<= 600 s) and compare with a ``FileTruth``."""
    from earshot.analysis import analyze_audio

    result = analyze_audio(engine, audio, tasks=list(tasks), settings=settings)
    hyp = " ".join(u.text for u in result.transcript)
    errors, words = word_errors(truth.transcript, hyp)
    predicted = [Event(start=e.start, end=e.end, label=e.label) for e in result.events]
    pairs = [(asdict(t), asdict(p) if p else None) for t, p in pair_events(truth.events, predicted)]
    return FileScore(
        transcript=[(u.start, u.end, u.text) for u in result.transcript],
        events=[(e.start, e.end, e.label) for e in result.events],
        caption=result.caption,
        reference=truth.transcript,
        word_errors=errors,
        words=words,
        event_pairs=pairs,
    )
