"""The committed golden checkpoint: the real AF3 layout, a whole think adapter, and eval figures
that match bench/results/golden_check.json on held-out windows rebuilt here from their seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from earshot.config import Settings
from earshot.corpus.generate import generate_split
from earshot.evaluation import evaluate, load_engine

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "models" / "golden"
CHECK = REPO / "bench" / "results" / "golden_check.json"
# Greedy decoding of the same weights on the same windows: the figures are the same up to float
# summation order (thread count, BLAS build). One flipped token moves a window's WER by ~1-2
# words in ~70, so the tolerances allow a couple of such flips and nothing more.
WER_TOL = 0.03
SECONDS_TOL = 0.15
ACC_TOL = 0.1


@pytest.fixture(scope="module")
def golden() -> Any:
    return load_engine(GOLDEN, settings=Settings(device="cpu", model_path=str(GOLDEN)))


def test_the_golden_checkpoint_has_the_real_af3_layout_and_is_small() -> None:
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "model.safetensors",
        "think/adapter_config.json",
        "think/adapter_model.safetensors",
        "think/non_lora_trainables.bin",
    ):
        assert (GOLDEN / name).is_file(), name
    assert (GOLDEN / "model.safetensors").stat().st_size < 30 * 1024 * 1024


def test_the_golden_checkpoint_loads_with_its_whole_think_adapter(golden: Any) -> None:
    assert golden.has_think_adapter


def test_eval_on_held_out_windows_rebuilt_from_their_seeds_matches_bench_results(
    golden: Any, tmp_path: Path
) -> None:
    expected = json.loads(CHECK.read_text())
    limit = int(expected["limit"])
    dirs = [generate_split(s["split"], tmp_path, windows=limit, workers=1) for s in expected["splits"]]
    got = evaluate(golden, dirs)
    for want, have in zip(expected["splits"], got["splits"], strict=True):
        assert have["split"] == want["split"] and have["words"] == want["words"]
        assert have["wer"] == pytest.approx(want["wer"], abs=WER_TOL)
        for key in ("onset_mae_s", "offset_mae_s"):
            if want[key] is None:
                assert have[key] is None
            else:
                assert have[key] == pytest.approx(want[key], abs=SECONDS_TOL)
        for key in ("event_label_accuracy", "caption_label_accuracy"):
            if want[key] is not None:
                assert have[key] == pytest.approx(want[key], abs=ACC_TOL)
