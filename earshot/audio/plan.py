"""Split a stream of audio into segments of at most ``max_segment_s``, cut at quiet points.

AF3 hears at most 600 s per call and silently drops the rest, so long files are split
first. Cutting in the middle of a word hurts both halves; cutting in a pause hurts neither.
The segmenter is one pass over the decoded chunks with a bounded buffer, so a three-hour
upload needs no more memory than one segment.

All positions are kept in samples and converted to seconds at the edge, so consecutive
segments share their boundary exactly (``end_s`` of one is ``start_s`` of the next).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from dataclasses import dataclass

import numpy as np

from earshot.audio.decode import SAMPLE_RATE

__all__ = [
    "Segment",
    "SegmentPlan",
    "choose_cut",
    "clamp_relative",
    "frame_rms",
    "segment_stream",
    "to_absolute",
]

# Frames whose RMS differs from the minimum by less than this (-140 dBFS) are ties: float
# noise and lossy-codec residue in a pause must not decide where inside the pause to cut.
_TIE_TOLERANCE = 1e-7


@dataclass(frozen=True)
class SegmentPlan:
    """Where a segment sits in the original file, in seconds."""

    index: int
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Segment:
    """A planned segment together with its 16 kHz mono float32 samples.

    ``start_sample`` is the exact position in the decoded stream; ``start_s`` and ``end_s``
    are derived from it and ``sample_rate``.
    """

    index: int
    start_s: float
    end_s: float
    samples: np.ndarray
    start_sample: int
    sample_rate: int = SAMPLE_RATE

    @property
    def end_sample(self) -> int:
        return self.start_sample + int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.sample_rate

    @property
    def plan(self) -> SegmentPlan:
        return SegmentPlan(self.index, self.start_s, self.end_s)


def frame_rms(samples: np.ndarray, frame_n: int) -> np.ndarray:
    """RMS of consecutive non-overlapping frames of ``frame_n`` samples (tail dropped)."""
    n_frames = samples.shape[0] // frame_n
    frames = samples[: n_frames * frame_n].reshape(n_frames, frame_n)
    # einsum avoids materialising the squared frames; float64 accumulation keeps the
    # RMS of true silence at exactly 0.
    power = np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / frame_n
    return np.sqrt(power)


def choose_cut(frame_rms: np.ndarray, frame_s: float, lo: int, hi: int) -> int:
    """Index of the quietest frame in ``[lo, hi)``; on a tie, the latest one.

    Preferring the latest quiet frame makes the segment before the cut as long as
    possible, so a file splits into fewer segments. ``frame_s`` is the frame length the
    RMS values were computed over; it takes no part in the choice and is only checked.
    """
    if frame_s <= 0:
        raise ValueError("frame_s must be positive")
    lo = max(lo, 0)
    hi = min(hi, int(frame_rms.shape[0]))
    if lo >= hi:
        raise ValueError(f"empty search range [{lo}, {hi})")
    window = np.asarray(frame_rms[lo:hi], dtype=np.float64)
    # NaN never wins; if everything is NaN, every frame ties and the latest is taken.
    window = np.where(np.isnan(window), np.inf, window)
    quietest = float(window.min())
    tied = np.flatnonzero(window <= quietest + _TIE_TOLERANCE)
    return lo + int(tied[-1])


def segment_stream(
    chunks: Iterable[np.ndarray],
    *,
    sample_rate: int = SAMPLE_RATE,
    max_segment_s: float = 600.0,
    search_s: float = 30.0,
    frame_s: float = 0.1,
    min_segment_s: float = 1.0,
) -> Generator[Segment, None, None]:
    """Cut a stream of mono chunks into :class:`Segment` s, in one pass.

    When the buffer holds ``max_segment_s`` (plus ``min_segment_s``, see below), the
    quietest ``frame_s`` frame within the last ``search_s`` before the limit is found and
    the segment ends in the middle of it. The rest stays in the buffer for the next one.

    Guarantees: the first segment starts at sample 0; each segment starts exactly where
    the previous one ended; together they cover every input sample; none is longer than
    ``max_segment_s``; none is empty. A cut also always leaves at least ``min_segment_s``
    after it, so the file never ends in a sliver of audio: instead of merging a short
    tail afterwards (which would overflow the limit), the cut is placed so that the tail
    cannot be short. Only a file shorter than ``min_segment_s`` gives a shorter segment.

    The buffer holds at most ``max_segment_s + min_segment_s`` of audio, whatever the
    size of the input chunks (a whole file in one array works too).
    """
    max_n = round(max_segment_s * sample_rate)
    frame_n = max(1, round(frame_s * sample_rate))
    search_n = min(max_n, round(search_s * sample_rate))
    min_tail_n = round(min_segment_s * sample_rate)
    if max_n < 1:
        raise ValueError("max_segment_s is shorter than one sample")
    if search_n < 0 or frame_s <= 0:
        raise ValueError("search_s must be >= 0 and frame_s > 0")
    if not 0 <= min_tail_n < max_n:
        raise ValueError("min_segment_s must be in [0, max_segment_s)")

    # One preallocated buffer, filled in place: no list of chunks plus a concatenated copy.
    # np.empty only reserves address space; pages become resident as they are written.
    capacity = max_n + min_tail_n
    buffer = np.empty(capacity, dtype=np.float32)
    filled = 0
    start = 0
    index = 0

    def take(upper: int) -> Segment:
        nonlocal buffer, filled, start, index
        cut = _cut_position(buffer[:filled], upper, search_n, frame_n, frame_s)
        segment = Segment(
            index=index,
            start_s=start / sample_rate,
            end_s=(start + cut) / sample_rate,
            samples=buffer[:cut],
            start_sample=start,
            sample_rate=sample_rate,
        )
        # The emitted segment keeps the old buffer; the remainder moves to a fresh one.
        rest = filled - cut
        fresh = np.empty(capacity, dtype=np.float32)
        fresh[:rest] = buffer[cut:filled]
        buffer, filled = fresh, rest
        start += cut
        index += 1
        return segment

    for chunk in chunks:
        array = np.asarray(chunk, dtype=np.float32)
        if array.ndim != 1:
            raise ValueError(f"chunks must be 1-D mono arrays, got shape {array.shape}")
        pos = 0
        while pos < array.shape[0]:
            n = min(capacity - filled, array.shape[0] - pos)
            buffer[filled : filled + n] = array[pos : pos + n]
            filled += n
            pos += n
            # Waiting for min_tail_n past the limit means the remainder after a cut at or
            # before max_n is never shorter than min_segment_s, whatever comes next.
            if filled == capacity:
                yield take(max_n)

    while filled > max_n:
        yield take(min(max_n, filled - min_tail_n))
    if filled > 0:
        yield Segment(
            index=index,
            start_s=start / sample_rate,
            end_s=(start + filled) / sample_rate,
            samples=buffer[:filled],
            start_sample=start,
            sample_rate=sample_rate,
        )


def _cut_position(data: np.ndarray, upper: int, search_n: int, frame_n: int, frame_s: float) -> int:
    """Sample index in ``(0, upper]`` at which to end the segment that starts at 0."""
    lower = max(0, upper - search_n)
    n_frames = (upper - lower) // frame_n
    if n_frames == 0:
        # Search window narrower than one frame: nothing to choose from, cut at the limit.
        return upper
    first = upper - n_frames * frame_n
    rms = frame_rms(data[first:upper], frame_n)
    k = choose_cut(rms, frame_s, 0, n_frames)
    return max(1, first + k * frame_n + frame_n // 2)


def to_absolute(segment_start_s: float, t: float) -> float:
    """A time relative to a segment's start -> a time in the original file."""
    return segment_start_s + t


def clamp_relative(t: float, duration_s: float) -> float:
    """Force a model-produced time into ``[0, duration_s]``.

    Model timestamps are generated text and can be negative, past the end, or NaN
    (mapped to 0, the only position known to exist).
    """
    if math.isnan(t):
        return 0.0
    return min(max(t, 0.0), duration_s)
