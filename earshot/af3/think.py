"""AF3's thinking mode: a PEFT LoRA adapter in the checkpoint's ``think/`` folder.

The adapter is loaded once next to the base weights and switched on per request, so a
request without thinking never pays for a reload. Loading is checked, not trusted: an
adapter whose weights do not land on this model's layers (another base model, renamed
keys, a non-LoRA method) is refused and the reason kept, so results can say "no think
adapter" instead of silently running the base model and calling it thinking.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from earshot.af3.runtime import AF3Runtime

log = logging.getLogger("earshot.think")

ADAPTER_NAME = "think"
ADAPTER_DIR = "think"
# Only the language model's attention: the encoder has layers with the same names.
LLM_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"
NO_ADAPTER_NOTE = (
    "No think adapter is loaded for this model: the answer comes from the base model given "
    "the think prompt suffix only, and any reasoning text is not AF3's trained thinking mode."
)


class ThinkAdapterError(Exception):
    """The think adapter exists but cannot be used with this model."""


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
    """Save a random (non-zero) LoRA so tests exercise the real loading path.

    ``init_lora_weights=False`` draws both A and B at random: the default (B = 0) would be
    a no-op adapter, and a test could not tell it from no adapter at all. Note that
    ``get_peft_model`` injects LoRA layers into ``model`` in place; save the base first.
    """
    import torch
    from peft import get_peft_model

    torch.manual_seed(seed + 1)
    config = think_lora_config(rank=rank, alpha=2 * rank, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def _lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def think_layers(model: Any) -> list[Any]:
    """The LoRA layers that carry the think adapter."""
    return [m for m in _lora_layers(model) if ADAPTER_NAME in getattr(m, "lora_A", {})]


def adapter_active(model: Any) -> bool:
    """True when any LoRA layer would apply the think adapter in a forward pass now."""
    for layer in think_layers(model):
        if not layer.disable_adapters and ADAPTER_NAME in layer.active_adapters:
            return True
    return False


def _check_config(adapter_dir: Path) -> dict[str, Any]:
    cfg_path = adapter_dir / "adapter_config.json"
    try:
        cfg: dict[str, Any] = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ThinkAdapterError(f"cannot read {cfg_path}: {exc}") from exc
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise ThinkAdapterError(f"{cfg_path} is a {cfg.get('peft_type')!r} adapter, not LoRA")
    if not any(adapter_dir.glob("adapter_model.*")):
        raise ThinkAdapterError(f"no adapter_model.safetensors/.bin next to {cfg_path}")
    return cfg


def attach_think_adapter(runtime: AF3Runtime, adapter_dir: Path) -> bool:
    """Load the think LoRA next to the base weights, switched off. Returns whether it is usable.

    A broken or mismatched adapter does not stop the engine: the base model still serves
    every request, ``runtime.think_loaded`` stays False and ``runtime.think_error`` says why.
    """
    model = runtime.model
    try:
        _check_config(adapter_dir)
        info = model.load_adapter(str(adapter_dir), adapter_name=ADAPTER_NAME)
        missing = sorted(getattr(info, "missing_keys", ()) or ())
        unexpected = sorted(getattr(info, "unexpected_keys", ()) or ())
        errors = list(getattr(info, "error_msgs", ()) or ())
        layers = think_layers(model)
        problem = None
        if not layers:
            problem = "its target_modules match no layer of this model"
        elif missing:
            problem = f"{len(missing)} adapter weight(s) were not in the file (e.g. {missing[0]})"
        elif unexpected:
            problem = f"{len(unexpected)} weight(s) match no layer of this model (e.g. {unexpected[0]})"
        elif errors:
            problem = "; ".join(str(e) for e in errors[:3])
        if problem:
            _drop_adapter(model)
            raise ThinkAdapterError(f"the think adapter in {adapter_dir} does not fit: {problem}")
    except Exception as exc:
        runtime.think_loaded = False
        runtime.think_error = str(exc)
        log.warning("think adapter not used: %s", exc)
        return False
    model.disable_adapters()
    runtime.think_loaded = True
    runtime.think_error = None
    log.info("think adapter loaded from %s (%d LoRA layers, off by default)", adapter_dir, len(layers))
    return True


def _drop_adapter(model: Any) -> None:
    try:
        model.delete_adapter(ADAPTER_NAME)
    except Exception:  # nothing (or not all) was injected: there is nothing more to undo
        log.debug("could not delete the think adapter", exc_info=True)
    for layer in _lora_layers(model):
        layer.enable_adapters(False)


@contextmanager
def think_context(runtime: AF3Runtime, enabled: bool) -> Iterator[bool]:
    """Run a block with the adapter on when asked and loaded; yields whether it is on.

    Holds the runtime lock for the whole block, so a concurrent request can never run with
    another request's adapter state. On exit (error included) the adapter is switched off,
    and a request without thinking first makes sure it is off: a stray "on" left behind by
    anything else cannot leak into a plain request.
    """
    with runtime.lock:
        model = runtime.model
        if not (enabled and runtime.think_loaded):
            if runtime.think_loaded and adapter_active(model):
                log.warning("think adapter was left on; switching it off")
                model.disable_adapters()
            yield False
            return
        model.enable_adapters()
        model.set_adapter(ADAPTER_NAME)
        try:
            yield True
        finally:
            model.disable_adapters()
