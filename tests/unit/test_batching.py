"""Batched generation: one generate over many prompts and audios gives, on CPU in float32,
exactly what each prompt gives alone (greedy); each row stops on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from earshot.af3.chat import Turn
from earshot.af3.generation import Generation
from earshot.af3.runtime import AF3Runtime, Row
from earshot.config import Settings
from earshot.engines.base import Ask
from earshot.engines.local import LocalEngine
from earshot.errors import InputError


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> AF3Runtime:
    return AF3Runtime.load(tiny_model_dir, device="cpu", dtype="float32")


def _rows(rt: AF3Runtime) -> list[Row]:
    rng = np.random.default_rng(7)
    clips = [rt.encode((rng.standard_normal(16000 * s) * 0.1).astype(np.float32)) for s in (2, 9, 31)]
    prompts = [("Transcribe the input speech.", 12), ("Describe the audio in one sentence.", 5)]
    rows = [Row(rt.prompt([Turn("user", p, audio=1)]), [c], n) for c in clips for p, n in prompts]
    rows.append(Row(rt.prompt([Turn("user", "Summarize these notes: the budget grew.")]), [], 17))
    rows.append(Row(rt.prompt([Turn("user", "What is happening?", audio=1)], think=True), [clips[1]], 12, think=True))
    return rows


@pytest.fixture(scope="module")
def answers(runtime: AF3Runtime) -> tuple[list[Row], list[Generation], list[Generation]]:
    rows = _rows(runtime)
    return rows, [runtime.generate_batch([r])[0] for r in rows], runtime.generate_batch(rows)


def test_batched_greedy_output_equals_unbatched_token_for_token(
    answers: tuple[list[Row], list[Generation], list[Generation]],
) -> None:
    _, alone, together = answers
    assert together == alone  # text, stop reason, prompt and new token counts, adapter
    assert {g.stop for g in alone} <= {"eos", "length"}
    # prompts of different lengths were left-padded: the rows really differed in length
    assert len({g.prompt_tokens for g in alone}) > 3


def test_each_row_stops_at_its_own_limit(
    runtime: AF3Runtime, answers: tuple[list[Row], list[Generation], list[Generation]]
) -> None:
    rows, _, out = answers
    for row, gen in zip(rows, out, strict=True):
        assert gen.new_tokens <= row.max_new_tokens
        assert (gen.stop == "length") == (gen.new_tokens == row.max_new_tokens and gen.truncated)
    short = runtime.generate_batch([Row(rows[0].prompt, rows[0].audio_embeds, 2)])[0]
    assert short.new_tokens <= 2
    assert short.stop == "length" or short.new_tokens < 2


def test_the_engine_encodes_each_audio_once_and_answers_in_ask_order(tiny_model_dir: Path) -> None:
    settings = Settings(model_path=str(tiny_model_dir), max_new_tokens=10, device="cpu", dtype="float32")
    engine = LocalEngine.from_settings(settings)
    rng = np.random.default_rng(1)
    audios = [(rng.standard_normal(16000 * s) * 0.1).astype(np.float32) for s in (3, 5)]
    windows: list[int] = []
    original = engine.runtime.encode_features

    def counting(feats: Any, mask: Any, *, think: bool = False) -> Any:
        windows.append(int(feats.shape[0]))
        return original(feats, mask, think=think)

    engine.runtime.encode_features = counting  # type: ignore[method-assign,assignment]
    asks = [Ask("Describe the audio.", audio=1, max_new_tokens=5), Ask("Transcribe the input speech.", audio=0),
            Ask("Hello there.", max_new_tokens=4), Ask("List every event.", audio=1, max_new_tokens=6)]
    together = engine.generate(asks, audios=audios)
    assert windows == [2]  # both clips' 30 s windows in one encoder forward, each clip once
    for ask, gen in zip(asks, together, strict=True):
        alone = engine.generate([Ask(ask.prompt, audio=0 if ask.audio is not None else None,
                                     max_new_tokens=ask.max_new_tokens)],
                                audios=[audios[ask.audio]] if ask.audio is not None else [])
        assert alone == [gen]
    assert together[2].new_tokens <= 4 and together[3].new_tokens <= 6
    with pytest.raises(InputError):
        engine.generate([Ask("x", audio=2)], audios=audios)


def test_rows_of_very_different_lengths_are_not_padded_together(runtime: AF3Runtime) -> None:
    from earshot.af3.batching import DEFAULT_MAX_BATCH_TOKENS, batches

    # a 600 s segment prompt (~15,000 tokens) next to 30 s chunk prompts (~780) and text (~60):
    # the token bound alone would let them share a batch; the length ratio keeps them apart
    lengths = {0: 800, 1: 15030, 2: 790, 3: 820, 4: 60, 5: 14900, 6: 810}
    groups = batches(list(lengths), runtime.max_batch_rows, DEFAULT_MAX_BATCH_TOKENS, lengths.__getitem__,
                     max_ratio=runtime.max_batch_ratio)
    assert sum(lengths.values()) * 2 < DEFAULT_MAX_BATCH_TOKENS
    assert sorted(i for g in groups for i in g) == sorted(lengths)
    assert groups == [[4], [2, 0, 6, 3], [5, 1]]
