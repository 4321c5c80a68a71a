"""Sentence cues inside a speech chunk: region per sentence, else by characters over the speech."""

from __future__ import annotations

import pytest

from earshot.audio.vad import merge_regions
from earshot.sentences import place_sentences, split_sentences


def test_sentences_split_at_end_marks_followed_by_space_only() -> None:
    assert split_sentences("It costs 12.5 euros. Really? Yes! ok… fine") == [
        "It costs 12.5 euros.",
        "Really?",
        "Yes!",
        "ok…",
        "fine",
    ]
    assert split_sentences("  ") == []


def test_as_many_regions_as_sentences_gives_each_sentence_its_region() -> None:
    (chunk,) = merge_regions([(1.0, 3.0), (3.8, 6.0), (7.0, 9.5)])
    assert chunk.regions == ((1.0, 3.0), (3.8, 6.0), (7.0, 9.5))
    assert place_sentences(chunk, "One two. Three four five. Six.") == [
        (1.0, 3.0, "One two."),
        (3.8, 6.0, "Three four five."),
        (7.0, 9.5, "Six."),
    ]


def test_otherwise_sentences_share_the_speech_time_by_length_and_skip_pauses() -> None:
    # two regions of 4 s each with a 2 s pause; three sentences of 10, 10 and 20 characters
    (chunk,) = merge_regions([(10.0, 14.0), (16.0, 20.0)])
    cues = place_sentences(chunk, "aaaaaaaaa. bbbbbbbbb. cccccccccccccccccccc")
    assert [c[2] for c in cues] == ["aaaaaaaaa.", "bbbbbbbbb.", "cccccccccccccccccccc"]
    (a0, a1, _), (b0, b1, _), (c0, c1, _) = cues
    assert (a0, a1) == pytest.approx((10.0, 12.0))
    # the second sentence ends exactly at the pause: it ends at 14, and the third starts after it
    assert (b0, b1) == pytest.approx((12.0, 14.0))
    assert (c0, c1) == pytest.approx((16.0, 20.0))


def test_one_sentence_spans_the_whole_chunk_and_no_words_give_no_cue() -> None:
    (chunk,) = merge_regions([(0.5, 2.0), (2.5, 4.0)])
    assert place_sentences(chunk, "just one sentence") == [(0.5, 4.0, "just one sentence")]
    assert place_sentences(chunk, "") == []
