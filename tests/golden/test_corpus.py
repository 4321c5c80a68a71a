"""The golden corpus: reproducible from its seeds, held-out material really held out, events
where their labels say. No model involved: these run in seconds."""

from __future__ import annotations

import numpy as np

from earshot.corpus import sounds
from earshot.corpus.generate import make_window
from earshot.corpus.grammar import is_heldout, sample_sentence
from earshot.corpus.spec import load_spec
from earshot.corpus.voices import SAMPLE_RATE

SPEC = load_spec()


def test_vocabulary_has_at_least_150_words_and_five_event_kinds() -> None:
    assert len(SPEC.vocabulary()) >= 150
    assert {e.kind for e in SPEC.events} == {"siren", "alarm", "knock", "burst", "chime"}


def test_a_window_is_rebuilt_bit_for_bit_from_its_seed_and_index() -> None:
    a_scene, a_audio = make_window(SPEC, "eval", 3)
    b_scene, b_audio = make_window(SPEC, "eval", 3)
    c_scene, _ = make_window(SPEC, "eval", 4)
    assert a_scene.to_json() == b_scene.to_json()
    assert np.array_equal(a_audio, b_audio)
    assert a_scene.to_json() != c_scene.to_json()


def test_training_sentences_never_hold_a_held_out_word_pair_and_eval_sentences_always_do() -> None:
    rng = np.random.default_rng(0)
    train = [sample_sentence(rng, SPEC, heldout=False) for _ in range(300)]
    held = [sample_sentence(rng, SPEC, heldout=True) for _ in range(300)]
    assert not any(is_heldout(SPEC, s.slots) for s in train)
    assert all(is_heldout(SPEC, s.slots) for s in held)
    assert not {s.text for s in train} & {s.text for s in held}


def test_the_held_out_voice_is_not_a_training_voice_and_eval_seeds_differ_from_training() -> None:
    assert not set(SPEC.voices.heldout) & set(SPEC.voices.seen)
    train_seeds = {s.seed for s in SPEC.splits.values() if s.sentences == "train"}
    others = {s.seed for s in SPEC.splits.values() if s.sentences != "train"}
    assert train_seeds and others and not train_seeds & others
    assert all(s.voices == "seen" for s in SPEC.splits.values() if s.sentences == "train")
    scene, _ = make_window(SPEC, "eval_heldout_voice", 0, kind="speech")
    assert scene.voice in SPEC.voices.heldout


def test_sentences_and_events_sit_where_the_truth_says() -> None:
    scene, audio = make_window(SPEC, "eval", 0, kind="speech_events")
    assert scene.utterances and scene.events
    frame = SAMPLE_RATE // 10
    for u in scene.utterances:
        inside = audio[int(u.start * SAMPLE_RATE) : int(u.end * SAMPLE_RATE)]
        assert sounds.rms(inside) > 0
    # an events-only window: each event is far louder than the noise just before it
    scene, audio = make_window(SPEC, "eval", 1, kind="events")
    assert scene.events
    for e in scene.events:
        inside = audio[int(e.start * SAMPLE_RATE) + frame : int(e.end * SAMPLE_RATE) - frame]
        before = audio[max(0, int((e.start - 0.4) * SAMPLE_RATE)) : int((e.start - 0.1) * SAMPLE_RATE)]
        if before.size:
            assert sounds.rms(inside) > 2 * sounds.rms(before)


def test_a_words_window_says_single_words_apart_where_the_truth_says() -> None:
    split = next(name for name, s in SPEC.splits.items() if s.kinds and set(s.kinds) == {"words"})
    scene, audio = make_window(SPEC, split, 0)
    assert scene.kind == "words" and scene.utterances and not scene.events
    low, high = SPEC.scene.words_per_clip
    assert low <= len(scene.utterances) <= high
    vocabulary = SPEC.vocabulary()
    for u in scene.utterances:
        assert u.text.endswith(".") and set(u.text[:-1].lower().split()) <= vocabulary
        assert sounds.rms(audio[int(u.start * SAMPLE_RATE) : int(u.end * SAMPLE_RATE)]) > 0
    for a, b in zip(scene.utterances, scene.utterances[1:], strict=False):
        assert b.start - a.end >= SPEC.scene.pause_s[0] - 0.01
    # the clip ends a lead's length after the last word, as a speech chunk would
    assert SPEC.scene.trim_speech
    tail = len(audio) / SAMPLE_RATE - scene.utterances[-1].end
    assert SPEC.scene.lead_s[0] - 0.01 <= tail <= SPEC.scene.lead_s[1] + 0.01
    assert scene.duration == round(len(audio) / SAMPLE_RATE, 2)
