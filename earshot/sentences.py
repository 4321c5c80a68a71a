"""Sentence cues inside one transcribed speech chunk.

AF3 answers one transcript per chunk of up to 30 s, without times. A subtitle cue or a search hit
30 s long says little about when a word was said, so the chunk's transcript is cut into
sentences and each sentence gets a span from the voice-activity regions the chunk was merged
from. When there are as many regions as sentences (speakers pause between sentences), sentence
i is region i. Otherwise the sentences share the chunk's speech time (its pauses excluded) in
proportion to their length in characters, which is how long they take to say at a steady rate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from earshot.audio.vad import SpeechChunk

# a sentence ends at . ! ? or … followed by white space; "12.5" and "e.g." inside words stay whole
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def _along(regions: Sequence[tuple[float, float]], offset_s: float, *, starting: bool) -> float:
    """The clip time ``offset_s`` seconds into the speech of ``regions`` (pauses skipped).

    On a region boundary a start belongs to the next region, an end to the previous one, so no
    cue begins or ends inside a pause.
    """
    left = offset_s
    for k, (a, b) in enumerate(regions):
        length = b - a
        last = k == len(regions) - 1
        if left < length or (not starting and left <= length) or last:
            return min(b, a + max(0.0, left))
        left -= length
    return regions[-1][1]


def place_sentences(chunk: SpeechChunk, text: str) -> list[tuple[float, float, str]]:
    """(start, end, sentence) for each sentence of ``text``, in clip seconds."""
    sentences = split_sentences(text)
    if not sentences:
        return []
    regions = list(chunk.regions) or [(chunk.start, chunk.end)]
    if len(sentences) == len(regions):
        return [(a, b, s) for (a, b), s in zip(regions, sentences, strict=True)]
    speech = sum(b - a for a, b in regions)
    total = sum(len(s) for s in sentences)
    placed: list[tuple[float, float, str]] = []
    done = 0
    for sentence in sentences:
        start = _along(regions, speech * done / total, starting=True)
        done += len(sentence)
        end = _along(regions, speech * done / total, starting=False)
        placed.append((start, max(start, end), sentence))
    return placed
