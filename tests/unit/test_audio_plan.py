"""Segment planning: cut points in pauses, hard length limit, exact coverage, bounded memory."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from earshot.audio import (
    SAMPLE_RATE,
    Segment,
    SegmentPlan,
    choose_cut,
    clamp_relative,
    decode_stream,
    frame_rms,
    segment_stream,
    to_absolute,
)
from earshot.audio.synth import encode_file, speech_like_chunks, tone_with_silences

Span = tuple[float, float]


def check_cover(segments: Sequence[Segment], total_n: int, max_s: float, sr: int) -> None:
    """The invariants every plan must satisfy, whatever the input."""
    assert segments, "no segments"
    assert segments[0].start_sample == 0
    assert segments[0].start_s == 0.0
    for i, seg in enumerate(segments):
        assert seg.index == i
        assert seg.samples.shape[0] > 0
        assert seg.samples.shape[0] <= round(max_s * sr)
        assert seg.start_s == seg.start_sample / sr
        assert seg.end_s == seg.end_sample / sr
    for before, after in itertools.pairwise(segments):
        assert before.end_sample == after.start_sample
        assert before.end_s == after.start_s
    assert segments[-1].end_sample == total_n


def inside(t: float, spans: Sequence[Span], slack: float = 0.0) -> bool:
    return any(a - slack <= t <= b + slack for a, b in spans)


def cuts(segments: Sequence[Segment]) -> list[float]:
    return [seg.end_s for seg in segments[:-1]]


# ------------------------------------------------------------------------ choose_cut


def test_choose_cut_finds_the_quietest_frame() -> None:
    rms = np.array([0.5, 0.4, 0.1, 0.3, 0.2])
    assert choose_cut(rms, 0.1, 0, 5) == 2


def test_choose_cut_breaks_ties_towards_the_latest_frame() -> None:
    rms = np.array([0.3, 0.0, 0.0, 0.0, 0.2, 0.5])
    assert choose_cut(rms, 0.1, 0, 6) == 3


def test_choose_cut_only_looks_inside_the_range() -> None:
    rms = np.array([0.0, 0.4, 0.2, 0.3, 0.0])
    assert choose_cut(rms, 0.1, 1, 4) == 2


def test_choose_cut_ignores_nan_and_rejects_empty_ranges() -> None:
    assert choose_cut(np.array([np.nan, 0.2, 0.1, np.nan]), 0.1, 0, 4) == 2
    assert choose_cut(np.array([np.nan, np.nan]), 0.1, 0, 2) == 1
    with pytest.raises(ValueError, match="empty"):
        choose_cut(np.array([0.1, 0.2]), 0.1, 2, 2)
    with pytest.raises(ValueError):
        choose_cut(np.array([0.1, 0.2]), 0.0, 0, 2)


def test_frame_rms_drops_the_partial_last_frame() -> None:
    x = np.concatenate([np.zeros(4), np.full(4, 0.5), -np.ones(4), np.ones(2)]).astype(np.float32)
    np.testing.assert_allclose(frame_rms(x, 4), [0.0, 0.5, 1.0])


# ------------------------------------------------------------------------ segmenting

# Speech with a 0.6 s pause every 8 s: any 10 s search window holds at least one whole
# pause, so with max 60 s / search 10 s every cut has a pause to land in.
REGULAR_PAUSES: list[Span] = [(t, t + 0.6) for t in np.arange(5.0, 25 * 60, 8.0)]


@pytest.fixture(scope="module")
def minutes_25() -> np.ndarray:
    return tone_with_silences(25 * 60, REGULAR_PAUSES, SAMPLE_RATE, seed=11)


def test_cuts_land_in_pauses_and_segments_respect_the_limit(minutes_25: np.ndarray) -> None:
    segments = list(segment_stream(iter([minutes_25]), max_segment_s=60.0, search_s=10.0))

    check_cover(segments, minutes_25.shape[0], 60.0, SAMPLE_RATE)
    assert len(segments) >= 25
    for t in cuts(segments):
        assert inside(t, REGULAR_PAUSES), f"cut at {t:.2f} s is not in a pause"
        # Every window holds a whole pause: the cut is near the limit, not anywhere.
        assert t > 0
    for seg in segments[:-1]:
        assert seg.duration_s >= 50.0
    np.testing.assert_array_equal(np.concatenate([s.samples for s in segments]), minutes_25)


def test_ties_in_a_pause_pick_its_end(minutes_25: np.ndarray) -> None:
    """Digital silence ties everywhere in a pause; the latest frame wins, so the cut sits
    in the last 100 ms frame of the pause (its middle, 50 ms before the frame ends)."""
    segments = list(segment_stream(iter([minutes_25]), max_segment_s=60.0, search_s=10.0))
    for t in cuts(segments):
        end = next(b for a, b in REGULAR_PAUSES if a <= t <= b)
        assert end - 0.15 - 1e-9 <= t <= end - 0.05 + 1e-9


def test_the_quietest_point_beats_a_merely_quiet_one() -> None:
    """A soft passage (-26 dB) and a real pause are both in the window: the pause wins."""
    sr = SAMPLE_RATE
    audio = tone_with_silences(90.0, [(53.0, 53.4)], sr, seed=2)
    audio[int(57.0 * sr) : int(59.0 * sr)] *= 0.05  # quiet speech right before the limit
    segments = list(segment_stream([audio], max_segment_s=60.0, search_s=10.0))
    check_cover(segments, audio.shape[0], 60.0, sr)
    assert inside(segments[0].end_s, [(53.0, 53.4)])


def test_a_pause_before_the_search_window_is_not_used() -> None:
    """Only the last ``search_s`` before the limit is searched: an earlier pause would
    make a needlessly short segment (and, repeated, many more calls to the model)."""
    sr = SAMPLE_RATE
    audio = tone_with_silences(100.0, [(44.0, 46.0)], sr, seed=8)
    segments = list(segment_stream([audio], max_segment_s=60.0, search_s=10.0))
    check_cover(segments, audio.shape[0], 60.0, sr)
    assert 50.0 <= segments[0].end_s <= 60.0


def test_without_pauses_the_cut_is_the_quietest_frame_of_the_window() -> None:
    sr = SAMPLE_RATE
    audio = tone_with_silences(150.0, [], sr, seed=4)
    segments = list(segment_stream([audio], max_segment_s=60.0, search_s=10.0))
    check_cover(segments, audio.shape[0], 60.0, sr)
    frame_n = sr // 10
    for seg in segments[:-1]:
        # Brute force over the search window's 100 frames, which end at the 60 s limit.
        limit = seg.start_sample + 60 * sr
        frames = audio[limit - 100 * frame_n : limit].reshape(100, frame_n).astype(np.float64)
        loudness = np.sqrt((frames**2).mean(axis=1))
        chosen = (seg.end_sample - (limit - 100 * frame_n)) // frame_n
        assert loudness[chosen] == loudness.min()
        assert (seg.end_sample - (limit - 100 * frame_n)) % frame_n == frame_n // 2
        assert loudness.min() < 0.5 * np.median(loudness)  # a syllable gap, not a vowel


def test_default_limits_on_25_minutes_in_memory() -> None:
    """The production setting: 600 s segments, 30 s search, 16 kHz."""
    pauses: list[Span] = [(585.0, 587.0), (1160.0, 1162.0)]
    chunks = list(speech_like_chunks(25 * 60, pauses, SAMPLE_RATE, seed=5))
    total_n = sum(c.shape[0] for c in chunks)

    segments = list(segment_stream(iter(chunks)))

    check_cover(segments, total_n, 600.0, SAMPLE_RATE)
    assert len(segments) == 3
    assert [inside(t, pauses) for t in cuts(segments)] == [True, True]
    assert segments[-1].duration_s == pytest.approx(25 * 60 - segments[1].end_s)


def test_result_does_not_depend_on_chunking(minutes_25: np.ndarray) -> None:
    audio = minutes_25[: 7 * 60 * SAMPLE_RATE]

    def split(size: int) -> Iterator[np.ndarray]:
        for i in range(0, audio.shape[0], size):
            yield audio[i : i + size]

    plans = {
        size: [s.plan for s in segment_stream(split(size), max_segment_s=60.0, search_s=10.0)]
        for size in (audio.shape[0], 30 * SAMPLE_RATE, 7919)  # whole, decoder-sized, odd
    }
    first, *others = plans.values()
    assert all(plan == first for plan in others)


def test_buffer_stays_bounded(minutes_25: np.ndarray) -> None:
    """Segments are produced as input arrives, never after reading far ahead."""
    chunk_n = 30 * SAMPLE_RATE
    pulled = 0

    def counting() -> Iterator[np.ndarray]:
        nonlocal pulled
        for i in range(0, minutes_25.shape[0], chunk_n):
            piece = minutes_25[i : i + chunk_n]
            pulled += piece.shape[0]
            yield piece

    max_s, min_tail_s = 60.0, 1.0
    for seg in segment_stream(counting(), max_segment_s=max_s, search_s=10.0):
        if pulled < minutes_25.shape[0]:
            ahead = pulled - seg.start_sample
            assert ahead <= (max_s + min_tail_s) * SAMPLE_RATE + chunk_n


@pytest.mark.parametrize(
    "total_s", [0.4, 10.0, 59.99, 60.0, 60.01, 60.5, 61.0, 119.7, 120.2, 181.0]
)
def test_lengths_around_the_limit(total_s: float) -> None:
    """No sliver at the end: the last segment is >= 1 s unless the file itself is shorter."""
    sr = 1000  # the invariants do not depend on the rate; a low one keeps this quick
    # Put a pause right at each limit so the quietest point tempts the planner to leave a
    # tiny remainder.
    pauses = [(k * 60.0 - 0.5, k * 60.0 + 0.5) for k in range(1, 4)]
    audio = tone_with_silences(total_s, pauses, sr, seed=9)
    segments = list(segment_stream([audio], sample_rate=sr, max_segment_s=60.0, search_s=10.0))

    check_cover(segments, audio.shape[0], 60.0, sr)
    assert len(segments) == max(1, math.ceil(audio.shape[0] / (60 * sr)))
    assert segments[-1].duration_s >= min(1.0, total_s) - 1e-9


def test_empty_input_gives_no_segments_and_silence_is_still_covered() -> None:
    assert list(segment_stream([])) == []
    assert list(segment_stream([np.zeros(0, np.float32)])) == []
    silence = np.zeros(130 * 100, np.float32)
    segments = list(segment_stream([silence], sample_rate=100, max_segment_s=60, search_s=10))
    check_cover(segments, silence.shape[0], 60.0, 100)


def test_segment_stream_rejects_multichannel_input_and_bad_lengths() -> None:
    with pytest.raises(ValueError, match="1-D"):
        list(segment_stream([np.zeros((10, 2), np.float32)]))
    with pytest.raises(ValueError):
        list(segment_stream([np.zeros(10, np.float32)], max_segment_s=0.0))
    with pytest.raises(ValueError):
        list(segment_stream([np.zeros(10, np.float32)], max_segment_s=1.0, min_segment_s=1.0))


def test_decoded_mp3_end_to_end(tmp_path: Path) -> None:
    """decode_stream -> segment_stream on a real lossy file: pauses survive encoding."""
    pauses: list[Span] = [(t, t + 0.6) for t in np.arange(5.0, 150.0, 8.0)]
    audio = tone_with_silences(150.0, pauses, SAMPLE_RATE, seed=6)
    path = encode_file(audio, tmp_path / "talk.mp3")

    segments = list(segment_stream(decode_stream(path), max_segment_s=60.0, search_s=10.0))

    check_cover(segments, segments[-1].end_sample, 60.0, SAMPLE_RATE)
    assert segments[-1].end_s == pytest.approx(150.0, abs=0.1)
    assert len(segments) == 3
    for t in cuts(segments):
        assert inside(t, pauses, slack=0.02)


# ------------------------------------------------------------------------ time mapping


def test_segment_times_map_to_the_file_and_invented_times_are_clamped() -> None:
    seg = Segment(1, 581.45, 1166.2, np.zeros(round((1166.2 - 581.45) * SAMPLE_RATE)), 9_303_200)
    plan = seg.plan
    assert plan == SegmentPlan(1, 581.45, 1166.2)
    assert plan.duration_s == pytest.approx(584.75)
    assert seg.duration_s == pytest.approx(584.75)

    assert to_absolute(plan.start_s, 12.5) == pytest.approx(593.95)
    assert to_absolute(0.0, 3.0) == 3.0
    assert clamp_relative(-3.0, plan.duration_s) == 0.0
    assert clamp_relative(1e9, plan.duration_s) == plan.duration_s
    assert clamp_relative(42.0, plan.duration_s) == 42.0
    assert clamp_relative(float("nan"), plan.duration_s) == 0.0
    # A timestamp a model invents past the end maps to the segment's end in the file.
    assert to_absolute(plan.start_s, clamp_relative(9999.0, plan.duration_s)) == pytest.approx(
        plan.end_s
    )
