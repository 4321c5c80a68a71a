"""AF3's thinking mode: the checkpoint's ``think/`` folder, loaded whole.

The release's ``think/`` holds two parts that belong together (NVIDIA's own loader applies
both): ``non_lora_trainables.bin``, plain weights trained next to the LoRA (applied with
``load_state_dict(strict=False)`` before it), and a PEFT LoRA (``adapter_config.json`` +
``adapter_model.safetensors``) on every linear layer of the LLM except ``lm_head``.

Both are loaded once next to the base weights and switched per batch: the non-LoRA weights
are swapped in place and the LoRA is enabled, so a request without thinking never pays for a
reload. Loading is checked, not trusted: a ``.bin`` that is not a plain tensor state dict (an
arbitrary pickle) is refused unread, and weights that do not land on this model's layers
refuse the whole adapter with the reason, so results say "no think adapter" instead of
running half an adapter and calling it thinking.

This module knows models and files only; the runtime decides when the mode switches.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

log = logging.getLogger("earshot.think")

ADAPTER_NAME = "think"
ADAPTER_DIR = "think"
NON_LORA_FILE = "non_lora_trainables.bin"
# Every nn.Linear of the LLM except lm_head (NVIDIA's stage-3.5 LoRA); the audio encoder has
# layers with the same short names, hence the language_model anchor.
LLM_TARGETS = (
    r".*language_model\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
)
# PEFT and LLaVA-style trainers prefix saved names; the weights are the same.
_NAME_PREFIXES = ("base_model.model.",)
# Parameters that shape the audio embeddings: when the think weights change any of them,
# audio must be encoded in think mode too.
AUDIO_PREFIXES = ("model.audio_tower.", "model.multi_modal_projector.")


class ThinkAdapterError(Exception):
    """The think adapter exists but cannot be used with this model."""


@dataclass
class ThinkWeights:
    """The non-LoRA part of the adapter: think values and the base values they replace."""

    params: dict[str, torch.Tensor] = field(default_factory=dict)  # live model tensors
    think: dict[str, torch.Tensor] = field(default_factory=dict)
    base: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def changes_audio(self) -> bool:
        return any(name.startswith(AUDIO_PREFIXES) for name in self.params)

    def apply(self, on: bool) -> None:
        import torch

        source = self.think if on else self.base
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(source[name])


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


def write_non_lora_trainables(out_dir: Path, state: dict[str, torch.Tensor]) -> Path:
    """Save the non-LoRA part (empty when training changed nothing but the LoRA)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / NON_LORA_FILE
    torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
    return path


def write_random_think_adapter(model: Any, out_dir: Path, *, seed: int = 0, rank: int = 4) -> Path:
    """Save a random think adapter in the release's layout, so tests load what production loads.

    Both parts are non-zero so a test can tell each from its absence: the non-LoRA part moves
    the audio projector and the LLM's final norm (the kinds of weights stage 3.5 trains), and
    the LoRA draws A and B at random (the default B = 0 would be a no-op). ``get_peft_model``
    injects LoRA layers into ``model`` in place: save the base first.
    """
    import torch
    from peft import get_peft_model

    generator = torch.Generator().manual_seed(seed + 2)
    moved = {
        name: value + 0.05 * torch.randn(value.shape, generator=generator, dtype=value.dtype)
        for name, value in model.state_dict().items()
        if name.startswith("model.multi_modal_projector.") or name == "model.language_model.norm.weight"
    }
    write_non_lora_trainables(out_dir, {_NAME_PREFIXES[0] + k: v for k, v in moved.items()})
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


def load_non_lora(path: Path, model: Any) -> ThinkWeights:
    """Read ``non_lora_trainables.bin`` as plain tensors and match it to ``model``'s weights.

    ``weights_only=True`` makes torch refuse anything but tensors and plain containers, so a
    file holding an arbitrary pickle is never executed.
    """
    import pickle

    import torch

    if not path.is_file():
        raise ThinkAdapterError(
            f"{path} is missing: AF3's think weights are a LoRA plus these non-LoRA weights, "
            "and half of them is not the trained thinking mode"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ThinkAdapterError(
            f"{path} is not a plain tensor state dict and was refused unread ({reason})"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ThinkAdapterError(f"{path} must hold a dict of tensor names to tensors")
    live = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    weights = ThinkWeights()
    unknown: list[str] = []
    for raw_name, value in state.items():
        name = raw_name
        for prefix in _NAME_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        target = live.get(name)
        if target is None:
            unknown.append(raw_name)
            continue
        if tuple(target.shape) != tuple(value.shape):
            raise ThinkAdapterError(
                f"{path}: {raw_name} has shape {list(value.shape)}, the model's {list(target.shape)}"
            )
        weights.params[name] = target
        weights.think[name] = value.to(target.device, target.dtype)
        weights.base[name] = target.detach().clone()
    if unknown:
        raise ThinkAdapterError(
            f"{path}: {len(unknown)} of {len(state)} weight(s) match no parameter of this model "
            f"(e.g. {unknown[0]})"
        )
    return weights


def attach_think_adapter(model: Any, adapter_dir: Path) -> ThinkWeights:
    """Load both parts of the think adapter, switched off; raises ``ThinkAdapterError``.

    On failure the model is left as the base model (no LoRA injected, base weights in place).
    """
    _check_config(adapter_dir)
    weights = load_non_lora(adapter_dir / NON_LORA_FILE, model)
    # Applied before the LoRA (as NVIDIA's loader does), then put back: the model stays base.
    weights.apply(True)
    weights.apply(False)
    try:
        info = model.load_adapter(str(adapter_dir), adapter_name=ADAPTER_NAME)
    except Exception as exc:
        _drop_adapter(model)
        raise ThinkAdapterError(f"the LoRA in {adapter_dir} does not load: {exc}") from exc
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
    model.disable_adapters()
    log.info(
        "think adapter loaded from %s (%d LoRA layers, %d non-LoRA weights, off by default)",
        adapter_dir, len(layers), len(weights.params),
    )
    return weights


def set_think(model: Any, weights: ThinkWeights, on: bool) -> None:
    """Switch both parts of the adapter on or off for every following forward pass."""
    weights.apply(on)
    if on:
        model.enable_adapters()
        model.set_adapter(ADAPTER_NAME)
    else:
        model.disable_adapters()


def _drop_adapter(model: Any) -> None:
    try:
        model.delete_adapter(ADAPTER_NAME)
    except Exception:  # nothing (or not all) was injected: there is nothing more to undo
        log.debug("could not delete the think adapter", exc_info=True)
    for layer in _lora_layers(model):
        layer.enable_adapters(False)
