"""Speech chunks: silero-vad on real eSpeak NG speech with pauses of known length."""

from __future__ import annotations

import itertools

import numpy as np

from earshot.audio.vad import VadOptions, merge_regions, speech_chunks
from tests.fixtures.speech import SENTENCES, speech_track

EDGE_S = 0.3


def test_speech_with_known_pauses_gives_chunks_whose_edges_are_the_speech_edges() -> None:
    # a short pause inside a chunk, long pauses between chunks
    track = speech_track([1.0, SENTENCES[0], 0.8, SENTENCES[1], 5.0, SENTENCES[2], 6.0, SENTENCES[3], 1.5])
    chunks = speech_chunks(track.samples)
    expected = [(track.edges[0][0], track.edges[1][1]), track.edges[2], track.edges[3]]
    assert len(chunks) == len(expected)
    for chunk, (start, end) in zip(chunks, expected, strict=True):
        assert abs(chunk.start - start) <= EDGE_S and abs(chunk.end - end) <= EDGE_S, (chunk, start, end)
        assert chunk.duration_s <= 30.0
        assert 0 < chunk.speech_s <= chunk.duration_s + 1e-9


def test_long_speech_is_cut_into_chunks_of_at_most_30_s_covering_every_sentence() -> None:
    script: list[str | float] = [0.5]
    for i in range(18):
        script += [SENTENCES[i % len(SENTENCES)], 0.4]
    track = speech_track(script)
    assert track.duration_s > 60
    chunks = speech_chunks(track.samples)
    assert len(chunks) >= 3
    assert all(c.duration_s <= 30.0 for c in chunks)
    assert all(a.end <= b.start for a, b in itertools.pairwise(chunks))
    # every sentence lies inside the chunks (at most EDGE_S outside one)
    for start, end in track.edges:
        covered = sum(max(0.0, min(end, c.end) - max(start, c.start)) for c in chunks)
        assert covered >= (end - start) - 2 * EDGE_S


def test_silence_and_hum_give_no_chunk() -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(16000 * 20, np.float32)
    hum = (0.01 * np.sin(np.arange(16000 * 20) * 2 * np.pi * 50 / 16000) + 0.001 * rng.standard_normal(16000 * 20))
    assert speech_chunks(silence) == []
    assert speech_chunks(hum.astype(np.float32)) == []


def test_regions_merge_like_whisperx_within_the_chunk_and_gap_limits() -> None:
    regions = [(0.0, 10.0), (10.5, 20.0), (21.0, 29.0), (29.5, 35.0), (40.0, 41.0)]
    chunks = merge_regions(regions, max_chunk_s=30.0, max_gap_s=3.0)
    # 0-29 fits in 30 s; 29.5-35 would not; 40-41 is after a 5 s pause
    assert [(c.start, c.end) for c in chunks] == [(0.0, 29.0), (29.5, 35.0), (40.0, 41.0)]
    assert chunks[0].speech_s == 10.0 + 9.5 + 8.0
    assert merge_regions([]) == []
    # no gap limit: WhisperX's own rule
    merged = merge_regions([(0.0, 1.0), (20.0, 21.0)], max_chunk_s=30.0, max_gap_s=float("inf"))
    assert [(c.start, c.end) for c in merged] == [(0.0, 21.0)]


def test_options_change_where_chunks_break() -> None:
    track = speech_track([0.5, SENTENCES[0], 2.0, SENTENCES[1], 0.5])
    assert len(speech_chunks(track.samples, options=VadOptions(max_gap_s=3.0))) == 1
    assert len(speech_chunks(track.samples, options=VadOptions(max_gap_s=1.0))) == 2
