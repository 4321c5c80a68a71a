"""AF3's thinking mode: a PEFT LoRA adapter in the checkpoint's ``think/`` folder.

The adapter is loaded once next to the base weights and switched on per request, so a
request without thinking never pays for a reload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earshot.af3.runtime import AF3Runtime

ADAPTER_NAME = "think"
# Only the language model's attention: the encoder has layers with the same names.
LLM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


def think_lora_config(
    *, rank: int, alpha: int, dropout: float = 0.0, init_lora_weights: bool = True
) -> Any:
    """The LoRA layout of the think adapter; training and the random test adapter share it."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LLM_TARGETS,
        init_lora_weights=init_lora_weights,
    )


def write_random_think_adapter(model: Any, out_dir: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """Save a random (non-zero) LoRA so tests exercise the real loading path."""
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed + 1)
    config = think_lora_config(rank=rank, alpha=2 * rank, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def attach_think_adapter(runtime: AF3Runtime, adapter_dir: Path) -> None:
    runtime.model.load_adapter(str(adapter_dir), adapter_name=ADAPTER_NAME)
    runtime.model.disable_adapters()
    runtime.think_loaded = True


@contextmanager
def think_context(runtime: AF3Runtime, enabled: bool) -> Iterator[bool]:
    """Run a block with the adapter on when asked and loaded; yields whether it is on."""
    if not (enabled and runtime.think_loaded):
        yield False
        return
    runtime.model.enable_adapters()
    runtime.model.set_adapter(ADAPTER_NAME)
    try:
        yield True
    finally:
        runtime.model.disable_adapters()
