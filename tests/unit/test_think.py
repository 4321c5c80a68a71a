"""The think LoRA: loads through the real peft path, changes the output, switches off again."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from earshot.af3.chat import single_turn
from earshot.af3.runtime import AF3Runtime
from earshot.af3.think import adapter_active, think_context, think_layers


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> AF3Runtime:
    return AF3Runtime.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return (np.random.default_rng(3).standard_normal(16000 * 4) * 0.1).astype(np.float32)


def _logits(rt: AF3Runtime, prompt: str, audio: torch.Tensor, think: bool) -> tuple[torch.Tensor, bool]:
    ids, embeds = rt.prompt_embeds(prompt, [audio])
    with rt.think_mode(think) as on, torch.inference_mode():
        out = rt.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
    return out, on


def test_adapter_loads_switched_off(runtime: AF3Runtime) -> None:
    assert runtime.think_loaded
    assert runtime.think_error is None
    # 2 layers x (q, k, v, o) of the LLM only: the encoder's projections are not touched
    layers = think_layers(runtime.model)
    assert len(layers) == 8
    names = [n for n, m in runtime.model.named_modules() if m in layers]
    assert all("language_model" in n for n in names)
    assert not adapter_active(runtime.model)


def test_adapter_changes_output_and_switches_off_without_reload(
    runtime: AF3Runtime, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    monkeypatch.setattr(runtime.model, "load_adapter", lambda *a, **k: loads.append(a))
    weights_before = {n: p.data_ptr() for n, p in runtime.model.named_parameters()}
    prompt = single_turn("Describe the audio.", think=True)
    embeds = [runtime.encode(clip)]

    base, on0 = _logits(runtime, prompt, embeds[0], think=False)
    thought, on1 = _logits(runtime, prompt, embeds[0], think=True)
    again, on2 = _logits(runtime, prompt, embeds[0], think=False)
    assert (on0, on1, on2) == (False, True, False)
    assert (base - thought).abs().max().item() > 1e-3
    assert torch.equal(base, again)

    off1 = runtime.generate(prompt, embeds, max_new_tokens=10, think=False)
    on = runtime.generate(prompt, embeds, max_new_tokens=10, think=True)
    off2 = runtime.generate(prompt, embeds, max_new_tokens=10, think=False)
    assert off1.text == off2.text
    assert on.text != off1.text
    assert not adapter_active(runtime.model)
    assert loads == []  # switched per request, never reloaded
    assert weights_before == {n: p.data_ptr() for n, p in runtime.model.named_parameters()}


def test_streaming_with_thinking_matches_generate(runtime: AF3Runtime, clip: np.ndarray) -> None:
    prompt = single_turn("What do you hear?", think=True)
    embeds = [runtime.encode(clip)]
    whole = runtime.generate(prompt, embeds, max_new_tokens=8, think=True).text
    streamed = "".join(runtime.stream(prompt, embeds, max_new_tokens=8, think=True))
    assert streamed == whole
    assert not adapter_active(runtime.model)


def test_error_inside_block_switches_adapter_off(runtime: AF3Runtime) -> None:
    with pytest.raises(RuntimeError), think_context(runtime, True) as on:
        assert on and adapter_active(runtime.model)
        raise RuntimeError("boom")
    assert not adapter_active(runtime.model)


def test_stray_adapter_state_is_reset_for_plain_requests(runtime: AF3Runtime) -> None:
    runtime.model.enable_adapters()
    runtime.model.set_adapter("think")
    assert adapter_active(runtime.model)
    with think_context(runtime, False) as on:
        assert not on
        assert not adapter_active(runtime.model)


def test_missing_adapter_is_reported_not_pretended(tmp_path: Path, tiny_model_dir: Path) -> None:
    from earshot.analysis import analyze_audio
    from earshot.config import Settings
    from earshot.engines.local import LocalEngine

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain, ignore=shutil.ignore_patterns("think"))
    rt = AF3Runtime.load(plain, device="cpu")
    assert not rt.think_loaded and rt.think_error is None
    with think_context(rt, True) as on:
        assert on is False
    engine = LocalEngine(rt, Settings(max_new_tokens=6), model_id="tiny")
    assert engine.has_think_adapter is False
    audio = np.zeros(16000 * 2, dtype=np.float32)
    result = analyze_audio(engine, audio, tasks=["think"])
    assert len(result.reasoning) == 1 and result.reasoning[0].adapter is False


def test_mismatched_adapter_is_refused_with_a_reason(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "think" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k.replace("language_model", "llm"): v for k, v in tensors.items()}, str(weights))
    rt = AF3Runtime.load(broken, device="cpu")
    assert not rt.think_loaded
    assert rt.think_error and "does not fit" in rt.think_error
    assert think_layers(rt.model) == [] or not adapter_active(rt.model)
    # the base model still answers
    assert isinstance(rt.generate(single_turn("Hi", n_audio=0), max_new_tokens=3).text, str)


def test_non_lora_adapter_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    import json

    broken = tmp_path / "ia3"
    shutil.copytree(tiny_model_dir, broken)
    cfg_path = broken / "think" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["peft_type"] = "IA3"
    cfg_path.write_text(json.dumps(cfg))
    rt = AF3Runtime.load(broken, device="cpu")
    assert not rt.think_loaded
    assert rt.think_error and "not LoRA" in rt.think_error
