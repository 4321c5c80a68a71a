"""Which parts of AF3 learn in a stage: freezing, the think LoRA, gradient checkpointing.

Parameter names of AudioFlamingo3ForConditionalGeneration: ``model.audio_tower.*`` (the
AF-Whisper encoder), ``model.multi_modal_projector.*`` and ``model.language_model.*`` +
``lm_head.*`` (Qwen2.5). Torch and transformers/peft only: the GPU benchmark imports this.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

PART_PREFIXES: dict[str, tuple[str, ...]] = {
    "encoder": ("model.audio_tower.",),
    "projector": ("model.multi_modal_projector.",),
    "llm": ("model.language_model.", "lm_head."),
}
# Fixed sinusoid-initialised positions: AF3 keeps them frozen even when the encoder trains.
ALWAYS_FROZEN = ("model.audio_tower.embed_positions.",)


def part_of(name: str) -> str | None:
    """The part a (non-LoRA) parameter name belongs to."""
    bare = name.removeprefix("base_model.model.")
    for part, prefixes in PART_PREFIXES.items():
        if bare.startswith(prefixes):
            return part
    return None


def set_trainable(model: torch.nn.Module, parts: Iterable[str]) -> None:
    """Freeze everything, then unfreeze the named parts (``think_lora`` is applied separately)."""
    wanted = tuple(p for part in parts if part != "think_lora" for p in PART_PREFIXES[part])
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(wanted) and not name.startswith(ALWAYS_FROZEN))


def add_think_lora(model: torch.nn.Module, *, rank: int, alpha: int, dropout: float) -> Any:
    """Wrap the model in a fresh think LoRA on the LLM's attention (base frozen by peft).

    Same layout as the released adapter (earshot.af3.think), so the runtime loads the result
    with ``load_adapter`` unchanged.
    """
    from peft import get_peft_model

    from earshot.af3.think import think_lora_config

    for param in model.parameters():
        param.requires_grad_(False)
    config = think_lora_config(rank=rank, alpha=alpha, dropout=dropout, init_lora_weights=True)
    return get_peft_model(model, config)  # type: ignore[arg-type]


def enable_gradient_checkpointing(model: Any) -> None:
    # Non-reentrant: works when the layer inputs do not require grad (frozen embeddings).
    kwargs = {"use_reentrant": False}
    # transformers 5.2x renamed the method (the old name warns); earlier 5.x has only the old one.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    total = trainable = 0
    for p in model.parameters():
        n = p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return {"total": total, "trainable": trainable}


def prepare_model(
    model: Any,
    *,
    trainable: Iterable[str],
    precision: str,
    gradient_checkpointing: bool,
    lora: dict[str, Any] | None = None,
) -> Any:
    """Apply a stage's freezing, LoRA, precision and checkpointing; returns the model to train."""
    from earshot.training.step import upcast_trainable

    parts = list(trainable)
    model.config.use_cache = False
    if gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if parts == ["think_lora"]:
        model = add_think_lora(model, **(lora or {"rank": 16, "alpha": 32, "dropout": 0.05}))
    else:
        set_trainable(model, parts)
    if precision == "bf16":
        upcast_trainable(model)
    model.train()
    return model
