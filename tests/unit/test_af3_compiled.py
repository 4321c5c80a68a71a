"""The cheap decode step (earshot.af3.compiled) changes how generate runs, never its tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from earshot.af3.chat import Turn
from earshot.af3.compiled import apply_decode_mode, decode_kwargs
from earshot.af3.runtime import AF3Runtime, Row
from earshot.audio.synth import tone_with_silences
from earshot.config import Settings
from earshot.engines.base import Ask
from earshot.engines.local import LocalEngine
from earshot.errors import ConfigError


def _batch(runtime: AF3Runtime) -> list[Row]:
    """Rows of different prompt lengths (left padding) and budgets, with and without audio."""
    clips = [runtime.encode(tone_with_silences(s, seed=i)) for i, s in enumerate((3.0, 7.5))]
    prompt = runtime.prompt
    return [
        Row(prompt([Turn("user", "Transcribe the input speech.", audio=1)]), [clips[0]], 24),
        Row(prompt([Turn("user", "Describe the audio in one sentence.", audio=1)]), [clips[1]], 9),
        Row(prompt([Turn("user", "Summarize these notes: the budget grew.")]), [], 17),
    ]


def test_the_local_engine_takes_its_decode_mode_from_settings(tiny_model_dir: Path) -> None:
    """EARSHOT_DECODE_MODE reaches the local engine's runtime, and changes no answer."""
    base = Settings(model_path=str(tiny_model_dir), device="cpu", dtype="float32")
    eager = LocalEngine.from_settings(base)
    static = LocalEngine.from_settings(base.model_copy(update={"decode_mode": "static", "decode_max_cache_len": 1024}))
    assert eager.runtime.decode_kwargs == {}
    assert static.runtime.decode_kwargs["cache_implementation"] == "static"
    assert static.runtime.decode_kwargs["max_cache_len"] == 1024
    audio = tone_with_silences(4.0, seed=3)
    asks = [Ask("Describe the audio in one sentence.", audio=0, max_new_tokens=12), Ask("Say hello.", max_new_tokens=7)]
    assert static.generate(asks, audios=[audio]) == eager.generate(asks, audios=[audio])
    # CUDA graphs on a CPU: refused when the engine starts, with the reason
    with pytest.raises(ConfigError) as err:
        LocalEngine.from_settings(base.model_copy(update={"decode_mode": "compiled"}))
    assert err.value.code == "bad_decode_mode"


def test_static_cache_gives_the_eager_tokens_on_one_batch(tiny_model_dir: Path) -> None:
    runtime = AF3Runtime.load(tiny_model_dir, device="cpu", dtype="float32")
    rows = _batch(runtime)
    eager = runtime.generate_batch(rows)
    apply_decode_mode(runtime, "static")
    assert runtime.decode_kwargs["cache_implementation"] == "static"
    static = runtime.generate_batch(rows)
    # A cache sized for longer calls than this one (no regrowth, no recompilation) too.
    apply_decode_mode(runtime, "static", max_cache_len=1024)
    sized = runtime.generate_batch(rows)
    assert [g.new_tokens for g in eager] != [0, 0, 0]
    assert static == eager and sized == eager


def test_compiled_mode_needs_cuda_and_unknown_modes_are_refused() -> None:
    assert decode_kwargs("eager", device="cpu") == {}
    with pytest.raises(ConfigError) as err:
        decode_kwargs("compiled", device="cpu")
    assert err.value.code == "bad_decode_mode" and "CUDA" in err.value.message
    with pytest.raises(ConfigError):
        decode_kwargs("turbo", device="cuda:0")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compiled_decode_gives_the_eager_tokens_on_gpu(tiny_model_dir: Path, dtype: str) -> None:
    """CUDA graphs replay the decode step; greedy tokens on the same batch must not change."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the compiled decode step is CUDA graphs)")
    runtime = AF3Runtime.load(tiny_model_dir, device="cuda", dtype=dtype)
    rows = _batch(runtime)
    eager = runtime.generate_batch(rows)
    apply_decode_mode(runtime, "compiled", max_cache_len=1024)
    first = runtime.generate_batch(rows)  # compiles and records the graphs
    again = runtime.generate_batch(rows)  # replays them
    assert [g.text for g in first] == [g.text for g in eager]
    assert again == first
    assert np.array_equal([g.new_tokens for g in again], [g.new_tokens for g in eager])
