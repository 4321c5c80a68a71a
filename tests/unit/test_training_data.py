"""Manifests, skipping, the token layout and the sample order -- no training here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from earshot.af3.chat import THINK_SUFFIX, Turn, render
from earshot.af3.runtime import window_token_counts
from earshot.config import Settings
from earshot.training.data import (
    AudioCache,
    ConversationDataset,
    MixturePlan,
    SkipLog,
    encode_conversation,
    prepare_records,
    read_records,
)
from earshot.training.demo import make_dataset, record
from earshot.training.step import IGNORE

# local files only: the defaults are all the storage needs
SETTINGS = Settings()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return make_dataset(tmp_path_factory.mktemp("data"), n=4, seconds=1.0, long_seconds=31.0)


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


def test_broken_records_are_skipped_and_counted(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    skips = SkipLog()
    records = read_records(str(data.broken), dataset="broken", think=False, skips=skips, settings=SETTINGS)
    good = prepare_records(records, cache=AudioCache(tmp_path, settings=SETTINGS), max_windows=1, skips=skips)
    assert [p.record.key for p in good] == ["broken:0", "broken:5"]
    assert dict(skips.counts) == {"malformed": 2, "missing_audio": 1, "undecodable": 1, "too_long": 1}
    # The same record met again (next epoch, another worker) is not counted twice.
    assert not skips.add("broken:1", "missing_audio", "again")
    assert skips.total == 5


def test_json_list_manifests_and_relative_sounds(data) -> None:  # type: ignore[no-untyped-def]
    skips = SkipLog()
    records = read_records(str(data.chat), dataset="chat", think=False, skips=skips, settings=SETTINGS)
    assert len(records) == 4 and skips.total == 0
    assert records[0].sounds == ((data.root / "clips" / "clip_00.wav").as_uri(),)
    assert [r for r, _ in records[0].turns] == ["user", "assistant", "user", "assistant"]


def test_labels_cover_assistant_turns_only(processor, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    tok = processor.tokenizer
    sound = tok.convert_tokens_to_ids("<sound>")
    turns = [
        ("user", "<sound>\nWhat is it?"),
        ("assistant", "A dog."),
        ("user", "Loud?"),
        ("assistant", "Yes."),
    ]
    ids, labels = encode_conversation(tok, turns, think=False, sound_id=sound)
    # The prompt before each answer is byte-for-byte what the engine sends at that point.
    full = render(tok, [Turn(r, t) for r, t in turns])[: -len("<|im_start|>assistant\n")]
    assert tok.decode(ids) == full.rstrip("\n")
    learned = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab not in (IGNORE, sound)])
    assert learned == "A dog.<|im_end|>Yes.<|im_end|>"
    think_ids, _ = encode_conversation(tok, turns[:2], think=True, sound_id=sound)
    assert THINK_SUFFIX in tok.decode(think_ids)


def test_samples_expand_sound_to_the_encoder_token_count(data, processor, tiny_model_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from transformers import AudioFlamingo3ForConditionalGeneration

    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(tiny_model_dir)
    sound = int(model.config.audio_token_id)
    skips = SkipLog()
    records = read_records(str(data.captions), dataset="c", think=False, skips=skips, settings=SETTINGS)
    records += read_records(str(data.long), dataset="l", think=False, skips=skips, settings=SETTINGS)
    items = prepare_records(records, cache=AudioCache("/nonexistent", settings=SETTINGS), max_windows=2, skips=skips)
    ds = ConversationDataset(
        items, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor,
        sound_id=sound, max_windows=2,
    )  # fmt: skip
    for index in (0, len(items) - 1):  # a 1 s clip (one partial window) and a 31 s clip (two)
        sample = ds[index]
        assert sample.features is not None and sample.feature_mask is not None
        with torch.no_grad():
            pooled = model.get_audio_features(sample.features, sample.feature_mask).pooler_output
        assert (
            sample.input_ids.count(sound) == pooled.shape[0] == sum(window_token_counts(sample.feature_mask))
        )
        assert all(
            lab == IGNORE for t, lab in zip(sample.input_ids, sample.labels, strict=True) if t == sound
        )


def test_a_sample_that_fails_late_is_replaced_and_reported(data, processor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    clips = []
    for i in range(2):
        clip = tmp_path / f"c{i}.wav"
        shutil.copy(data.root / "clips" / f"clip_{i:02d}.wav", clip)
        clips.append(clip)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(
            json.dumps(record(c.name, [("human", "<sound>\nWhat?"), ("gpt", "A tone.")])) + "\n"
            for c in clips
        )
    )
    skips = SkipLog()
    records = read_records(str(manifest), dataset="c", think=False, skips=skips, settings=SETTINGS)
    items = prepare_records(records, cache=AudioCache(tmp_path, settings=SETTINGS), max_windows=1, skips=skips)
    # The header was fine when the stage checked it; the file is damaged before it is used.
    clips[0].write_bytes(clips[0].read_bytes()[:60])
    ds = ConversationDataset(
        items, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor,
        sound_id=processor.tokenizer.convert_tokens_to_ids("<sound>"), max_windows=1,
    )  # fmt: skip
    sample = ds[0]
    assert sample.key == "c:1"
    assert [(k, r) for k, r, _ in sample.skipped] == [("c:0", "undecodable")]
    assert ds[0].skipped == []  # known bad now: skipped silently, counted once


def test_mixture_plan_is_deterministic_sharded_and_weighted() -> None:
    plan = MixturePlan([4, 10], [2.0, 0.5], batch_size=2, accumulation=1, world_size=2, seed=3)
    assert plan.epoch_len == 13 and plan.steps_per_epoch == 3
    first = plan.epoch_indices(0)
    assert sum(1 for i in first if i < 4) == 8  # every record of dataset 0 twice
    assert len({i for i in first if i >= 4}) == 5  # a random half of dataset 1
    assert plan.epoch_indices(1) != first
    ranks = [
        MixturePlan([4, 10], [2.0, 0.5], batch_size=2, accumulation=1, world_size=2, rank=r, seed=3)
        for r in (0, 1)
    ]
    for step in range(4):
        a, b = (r.micro_batches(step)[0] for r in ranks)
        assert len(a) == len(b) == 2
        assert a == ranks[0].micro_batches(step)[0]  # a pure function of the step
    # An epoch smaller than one global batch wraps instead of starving a rank.
    tiny = MixturePlan([3], [1.0], batch_size=4, accumulation=2, world_size=1)
    assert tiny.steps_per_epoch == 1 and [len(m) for m in tiny.micro_batches(0)] == [4, 4]
    assert tiny.total_steps(epochs=2, max_steps=0) == 2
    assert tiny.total_steps(epochs=2, max_steps=7) == 7


def test_manifest_lines_that_are_not_json(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"conversations": [{"from": "gpt", "value": "hi"}]}) + "\n\n[1, 2\n")
    skips = SkipLog()
    records = read_records(str(path), dataset="m", think=False, skips=skips, settings=SETTINGS)
    assert len(records) == 1 and records[0].sounds == ()
    assert dict(skips.counts) == {"malformed": 1}
