"""Speech chunks for transcription: silero-vad finds speech, chunks of at most 30 s go to ASR.

AF3 was trained on "Transcribe the input speech." over clips of up to 30 s (AF-Whisper's
window), so a segment's speech is cut the way WhisperX cuts it: the voice-activity model
splits any speech region longer than a chunk at its quietest point, then consecutive regions
are merged while the chunk stays within ``max_chunk_s``. Unlike WhisperX, a pause longer
than ``max_gap_s`` also closes a chunk, so one subtitle cue never spans a long silence.
Silence gives no chunk at all, so it costs no model call.

silero-vad ships its weights inside its wheel (MIT licence): it runs offline, here and in CI.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class SpeechChunk:
    """A span of a clip to transcribe in one prompt, in seconds from the clip's start."""

    start: float
    end: float
    # seconds of detected speech inside the span (pauses within a chunk excluded)
    speech_s: float
    # the voice-activity regions the chunk was merged from: where its sentences can sit
    regions: tuple[tuple[float, float], ...] = ()

    @property
    def duration_s(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.4
    max_chunk_s: float = 30.0
    max_gap_s: float = 3.0
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    pad_ms: int = 30


# The JIT model keeps recurrent state between windows: one caller at a time per process.
_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _model() -> Any:
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_regions(
    samples: np.ndarray, *, options: VadOptions = VadOptions(), sample_rate: int = SAMPLE_RATE
) -> list[tuple[float, float]]:
    """(start, end) seconds of each speech region; none longer than ``options.max_chunk_s``."""
    import torch
    from silero_vad import get_speech_timestamps

    if samples.size == 0:
        return []
    audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    with _LOCK, torch.inference_mode():
        found = get_speech_timestamps(
            audio,
            _model(),
            threshold=options.threshold,
            sampling_rate=sample_rate,
            min_speech_duration_ms=options.min_speech_ms,
            min_silence_duration_ms=options.min_silence_ms,
            speech_pad_ms=options.pad_ms,
            # silero splits longer speech at its longest pause (or hard, when there is none);
            # the padding it adds afterwards must still fit in a chunk
            max_speech_duration_s=options.max_chunk_s - 2 * options.pad_ms / 1000,
        )
    return [(int(r["start"]) / sample_rate, int(r["end"]) / sample_rate) for r in found]


def merge_regions(
    regions: Sequence[tuple[float, float]], *, max_chunk_s: float = 30.0, max_gap_s: float = 3.0
) -> list[SpeechChunk]:
    """Consecutive speech regions merged into chunks of at most ``max_chunk_s`` (WhisperX's merge,
    plus a chunk break at pauses longer than ``max_gap_s``)."""
    chunks: list[SpeechChunk] = []
    held: list[tuple[float, float]] = []
    for r_start, r_end in _split_long(regions, max_chunk_s):
        if held and (r_end - held[0][0] > max_chunk_s or r_start - held[-1][1] > max_gap_s):
            chunks.append(_chunk(held))
            held = []
        held.append((r_start, r_end))
    if held:
        chunks.append(_chunk(held))
    return chunks


def _chunk(regions: Sequence[tuple[float, float]]) -> SpeechChunk:
    return SpeechChunk(
        regions[0][0], regions[-1][1], sum(b - a for a, b in regions), regions=tuple(regions)
    )


def _split_long(regions: Sequence[tuple[float, float]], max_s: float) -> list[tuple[float, float]]:
    """Regions longer than ``max_s`` (silero's split is a target, not a promise) cut evenly."""
    out: list[tuple[float, float]] = []
    for a, b in regions:
        pieces = max(1, math.ceil((b - a) / max_s - 1e-9))
        step = (b - a) / pieces
        out.extend((a + k * step, b if k == pieces - 1 else a + (k + 1) * step) for k in range(pieces))
    return out


def speech_chunks(
    samples: np.ndarray, *, options: VadOptions = VadOptions(), sample_rate: int = SAMPLE_RATE
) -> list[SpeechChunk]:
    """The spans of ``samples`` to transcribe, each at most ``options.max_chunk_s`` long."""
    regions = speech_regions(samples, options=options, sample_rate=sample_rate)
    return merge_regions(regions, max_chunk_s=options.max_chunk_s, max_gap_s=options.max_gap_s)


def chunk_samples(samples: np.ndarray, chunk: SpeechChunk, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return samples[round(chunk.start * sample_rate) : round(chunk.end * sample_rate)]
