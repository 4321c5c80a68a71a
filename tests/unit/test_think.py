"""The whole think adapter: the release's think/ layout loads (non-LoRA weights + LoRA), each
part changes the output, modes switch per batch without a global lock, bad files are refused."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from earshot.af3.chat import Turn, single_turn
from earshot.af3.runtime import AF3Runtime, Row
from earshot.af3.think import NON_LORA_FILE, adapter_active, think_layers


@pytest.fixture(scope="module")
def runtime(tiny_model_dir: Path) -> AF3Runtime:
    return AF3Runtime.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return (np.random.default_rng(3).standard_normal(16000 * 4) * 0.1).astype(np.float32)


def _logits(rt: AF3Runtime, prompt: str, audio: torch.Tensor) -> torch.Tensor:
    embeds, attn, _ = rt._batch_inputs([Row(prompt, [audio])])
    with torch.inference_mode():
        return rt.model(inputs_embeds=embeds, attention_mask=attn).logits


def test_tiny_checkpoint_has_the_real_file_layout(tiny_model_dir: Path, runtime: AF3Runtime) -> None:
    for name in (
        "config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
        "tokenizer_config.json", "chat_template.jinja", "think/adapter_config.json",
        "think/adapter_model.safetensors", f"think/{NON_LORA_FILE}",
    ):
        assert (tiny_model_dir / name).is_file(), name
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == 2048 and not gen.get("do_sample", False)
    # the checkpoint's own template: a default system turn, <sound> before the text
    prompt = runtime.prompt([Turn("user", "Transcribe the input speech.", audio=1)])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<sound>Transcribe the input speech.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_whole_adapter_loads_switched_off(runtime: AF3Runtime) -> None:
    assert runtime.think_loaded and runtime.think_error is None
    assert runtime.think is not None
    # every nn.Linear of the LLM (2 layers x q, k, v, o, gate, up, down), never lm_head or the encoder
    layers = think_layers(runtime.model)
    names = [n for n, m in runtime.model.named_modules() if m in layers]
    assert len(layers) == 14
    assert all(".language_model.layers." in n for n in names) and not any("lm_head" in n for n in names)
    # the non-LoRA part: the projector and the LLM's final norm, applied and put back
    assert sorted(runtime.think.params) == sorted(
        [n for n, _ in runtime.model.named_parameters() if "multi_modal_projector" in n]
        + ["model.language_model.norm.weight"]
    )
    assert runtime.think.changes_audio
    for name, param in runtime.think.params.items():
        assert torch.equal(param, runtime.think.base[name])
    assert not adapter_active(runtime.model)


def test_each_part_of_the_adapter_changes_the_output(runtime: AF3Runtime, clip: np.ndarray) -> None:
    assert runtime.think is not None
    prompt = single_turn(runtime.tokenizer, "Describe the audio.", think=True)
    audio = runtime.encode(clip)
    base = _logits(runtime, prompt, audio)
    with runtime.gate.hold(False):
        runtime.think.apply(True)  # non-LoRA weights only
        non_lora = _logits(runtime, prompt, audio)
        runtime.think.apply(False)
        runtime.model.enable_adapters()  # LoRA only
        runtime.model.set_adapter("think")
        lora = _logits(runtime, prompt, audio)
        runtime.model.disable_adapters()
    assert (base - non_lora).abs().max().item() > 1e-4
    assert (base - lora).abs().max().item() > 1e-4
    assert torch.equal(base, _logits(runtime, prompt, audio))
    # think mode changes the audio embeddings too (the projector is part of the think weights)
    assert not torch.equal(audio, runtime.encode(clip, think=True))


def test_modes_switch_per_batch_without_reload(
    runtime: AF3Runtime, clip: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[Any] = []
    monkeypatch.setattr(runtime.model, "load_adapter", lambda *a, **k: loads.append(a))
    prompt = single_turn(runtime.tokenizer, "Describe the audio.", think=True)
    plain = [runtime.encode(clip)]
    thinking = [runtime.encode(clip, think=True)]
    off1 = runtime.generate(prompt, plain, max_new_tokens=10)
    on = runtime.generate(prompt, thinking, max_new_tokens=10, think=True)
    off2 = runtime.generate(prompt, plain, max_new_tokens=10)
    assert off1.text == off2.text and on.text != off1.text
    assert (off1.adapter, on.adapter) == (False, True)
    # one call mixing both modes answers each row as it would alone
    mixed = runtime.generate_batch(
        [Row(prompt, plain, 10), Row(prompt, thinking, 10, think=True), Row(prompt, plain, 10)]
    )
    assert [g.text for g in mixed] == [off1.text, on.text, off1.text]
    assert loads == []


def test_concurrent_requests_of_both_modes_get_their_own_answers(runtime: AF3Runtime, clip: np.ndarray) -> None:
    prompt = single_turn(runtime.tokenizer, "What do you hear?", think=True)
    plain = [runtime.encode(clip)]
    thinking = [runtime.encode(clip, think=True)]
    want = {False: runtime.generate(prompt, plain, max_new_tokens=12).text,
            True: runtime.generate(prompt, thinking, max_new_tokens=12, think=True).text}
    got: list[tuple[bool, str]] = []

    def ask(think: bool) -> None:
        for _ in range(3):
            embeds = thinking if think else plain
            got.append((think, runtime.generate(prompt, embeds, max_new_tokens=12, think=think).text))

    threads = [threading.Thread(target=ask, args=(t,)) for t in (False, True, False, True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 12 and all(text == want[think] for think, text in got)


def test_streaming_with_thinking_matches_generate(runtime: AF3Runtime, clip: np.ndarray) -> None:
    prompt = single_turn(runtime.tokenizer, "What do you hear?", think=True)
    embeds = [runtime.encode(clip, think=True)]
    whole = runtime.generate(prompt, embeds, max_new_tokens=8, think=True).text
    streamed = "".join(runtime.stream(Row(prompt, embeds, 8, think=True)))
    assert streamed == whole


def test_error_inside_a_think_batch_does_not_leak_into_plain_requests(runtime: AF3Runtime, clip: np.ndarray) -> None:
    prompt = single_turn(runtime.tokenizer, "Describe the audio.")
    embeds = [runtime.encode(clip)]
    before = runtime.generate(prompt, embeds, max_new_tokens=6).text
    with pytest.raises(RuntimeError), runtime.gate.hold(True):
        assert adapter_active(runtime.model)
        raise RuntimeError("boom")
    assert runtime.generate(prompt, embeds, max_new_tokens=6).text == before
    assert not adapter_active(runtime.model)


def _copy_without_think(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("think"))
    return dst


def test_a_bin_holding_a_pickle_is_refused_unread(tmp_path: Path, tiny_model_dir: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str, str]]:
            return (open, (str(marker), "w"))

    model = shutil.copytree(tiny_model_dir, tmp_path / "evil")
    torch.save({"model.language_model.norm.weight": Payload()}, model / "think" / NON_LORA_FILE)
    rt = AF3Runtime.load(model, device="cpu")
    assert not rt.think_loaded
    assert rt.think_error and "refused unread" in rt.think_error
    assert not marker.exists()  # the pickle never ran
    assert think_layers(rt.model) == [] or not adapter_active(rt.model)
    base = AF3Runtime.load(_copy_without_think(tiny_model_dir, tmp_path / "plain"), device="cpu")
    for (name, p), (_, q) in zip(rt.model.named_parameters(), base.model.named_parameters(), strict=True):
        assert torch.equal(p, q), name  # nothing of the adapter was applied


def test_half_an_adapter_is_not_reported_as_thinking(tmp_path: Path, tiny_model_dir: Path) -> None:
    model = shutil.copytree(tiny_model_dir, tmp_path / "half")
    (model / "think" / NON_LORA_FILE).unlink()
    rt = AF3Runtime.load(model, device="cpu")
    assert not rt.think_loaded and rt.think_error and "missing" in rt.think_error
    wrong = shutil.copytree(tiny_model_dir, tmp_path / "wrong")
    torch.save({"model.sound_mm_projector.weight": torch.zeros(2)}, wrong / "think" / NON_LORA_FILE)
    rt = AF3Runtime.load(wrong, device="cpu")
    assert not rt.think_loaded and rt.think_error and "match no parameter" in rt.think_error


def test_missing_adapter_is_reported_not_pretended(tmp_path: Path, tiny_model_dir: Path) -> None:
    from earshot.analysis import analyze_audio
    from earshot.config import Settings
    from earshot.engines.local import LocalEngine

    rt = AF3Runtime.load(_copy_without_think(tiny_model_dir, tmp_path / "plain"), device="cpu")
    assert not rt.think_loaded and rt.think_error is None
    settings = Settings(max_new_tokens=6)
    engine = LocalEngine(rt, settings, model_id="tiny")
    assert engine.has_think_adapter is False
    audio = np.zeros(16000 * 2, dtype=np.float32)
    result = analyze_audio(engine, audio, tasks=["think"], settings=settings)
    assert len(result.reasoning) == 1 and result.reasoning[0].adapter is False
    assert any("No think adapter" in n for n in result.notes)


def test_mismatched_lora_is_refused_with_a_reason(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(tiny_model_dir, tmp_path / "broken")
    weights = broken / "think" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k.replace("language_model", "llm"): v for k, v in tensors.items()}, str(weights))
    rt = AF3Runtime.load(broken, device="cpu")
    assert not rt.think_loaded
    assert rt.think_error and "does not fit" in rt.think_error
    assert think_layers(rt.model) == [] or not adapter_active(rt.model)
    # the base model still answers
    assert isinstance(rt.generate(single_turn(rt.tokenizer, "Hi", n_audio=0), max_new_tokens=3).text, str)


def test_init_tiny_command_writes_the_release_layout(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from services.cli.main import app

    out = tmp_path / "tiny"
    result = CliRunner().invoke(app, ["model", "init-tiny", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("chat_template.jinja", "generation_config.json", "preprocessor_config.json",
                 "think/adapter_config.json", "think/adapter_model.safetensors", f"think/{NON_LORA_FILE}"):
        assert (out / name).is_file(), name
    assert CliRunner().invoke(app, ["model", "init-tiny", str(tmp_path / "plain"), "--no-think"]).exit_code == 0
    assert not (tmp_path / "plain" / "think").exists()
