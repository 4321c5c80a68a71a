"""Helpers for the python-backend models: parameters, devices, loading one AF3 stage.

Runs inside Triton's python backend stub. Kept free of ``triton_python_backend_utils`` so
it can be imported (and checked) anywhere; the models in ``earshot.triton.models`` wrap it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from earshot.af3.runtime import AF3Runtime, pick_dtype
from earshot.errors import ConfigError
from earshot.triton.protocol import PARAM_CPU_THREADS

Stage = Literal["encoder", "llm"]


@dataclass(frozen=True)
class ModelArgs:
    """What Triton hands ``initialize``: the model's config and where this instance runs."""

    name: str
    config: dict[str, Any]
    device: str  # "cpu" or "cuda:N", from the instance group

    @classmethod
    def from_triton(cls, args: Mapping[str, str]) -> ModelArgs:
        config = json.loads(args["model_config"])
        kind = args.get("model_instance_kind", "CPU")
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
        return cls(name=args.get("model_name", config.get("name", "")), config=config, device=device)

    def param(self, key: str, default: str = "") -> str:
        """A string parameter with ``${VAR}`` expanded from the server's environment.

        Expansion lets one shipped config point at ``${EARSHOT_MODEL_PATH}`` while each
        deployment sets the variable (a Helm value) instead of editing config.pbtxt.
        """
        raw = self.config.get("parameters", {}).get(key, {}).get("string_value", default)
        return os.path.expandvars(str(raw)).strip()

    def int_param(self, key: str, default: int) -> int:
        value = self.param(key)
        try:
            return int(value) if value else default
        except ValueError as exc:
            raise ConfigError(f"model {self.name}: parameter {key}={value!r} is not an integer") from exc


def resolve_weights(args: ModelArgs) -> str:
    """The checkpoint location: the ``model_path`` parameter, else ``EARSHOT_MODEL_PATH``."""
    from earshot.af3.loading import resolve_model_dir
    from earshot.config import Settings

    settings = Settings()
    model_path = args.param("model_path") or settings.model_path
    if "$" in model_path:
        raise ConfigError(
            f"model {args.name}: the weights location {model_path!r} names an unset environment "
            "variable (set EARSHOT_MODEL_PATH for the server or the model_path parameter)",
            code="model_not_found",
        )
    return str(resolve_model_dir(model_path, settings))


def load_stage(args: ModelArgs, stage: Stage) -> AF3Runtime:
    """Load AF3 with only the modules one stage needs, on this instance's device.

    Loaded on CPU first and pruned before the move: the encoder instance never puts the
    7.6 B-parameter LLM on the GPU, and the LLM instance never holds the encoder.
    """
    model_dir = resolve_weights(args)
    if args.device == "cpu":
        import torch

        # Every instance is its own process next to others; letting each spread OpenMP
        # threads over all cores oversubscribes them (8 concurrent requests ran 20x slower
        # on 2 cores). Scale with instance count instead.
        torch.set_num_threads(max(1, args.int_param(PARAM_CPU_THREADS, 1)))
    dtype_name = args.param("dtype", "auto") or "auto"
    if dtype_name == "auto":
        dtype_name = str(pick_dtype("auto", args.device)).removeprefix("torch.")
    runtime = AF3Runtime.load(model_dir, device="cpu", dtype=dtype_name)
    inner = runtime.model.model
    if stage == "encoder":
        inner.language_model = None
        runtime.model.lm_head = None
    else:
        inner.audio_tower = None
        inner.multi_modal_projector = None
    _keep_stage_think(runtime, stage)
    runtime.model.to(args.device)
    runtime.device = args.device
    if args.device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return runtime


def _keep_stage_think(runtime: AF3Runtime, stage: Stage) -> None:
    """Keep only the think weights of the stage's own modules.

    The dropped half must not stay referenced (the LLM's would hold gigabytes in the encoder
    process). The encoder holds no LoRA layers (they are all in the LLM), so its think mode
    is only the non-LoRA audio weights, switched without PEFT.
    """
    from earshot.af3.runtime import ModeGate
    from earshot.af3.think import AUDIO_PREFIXES

    weights = runtime.think
    if weights is None:
        return
    for name in list(weights.params):
        if name.startswith(AUDIO_PREFIXES) != (stage == "encoder"):
            del weights.params[name], weights.think[name], weights.base[name]
    if stage == "encoder":
        runtime.gate = ModeGate(weights.apply)
