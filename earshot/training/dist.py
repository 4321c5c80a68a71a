"""Single process, DDP or FSDP from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

gloo on CPU, nccl on GPUs. FSDP (torch's fully_shard) shards each encoder and LLM layer; it is
what the full-size model needs when the LLM trains (fp32 master weights and Adam states of
8.3 B parameters do not fit one GPU), DDP is enough when only the projector/encoder learn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Layers each FSDP unit holds: one transformer block of the encoder or of Qwen2.
SHARD_LAYER_CLASSES = ("AudioFlamingo3EncoderLayer", "Qwen2DecoderLayer")


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join torchrun's process group when there is one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        if info.device.startswith("cuda"):
            dist.barrier(device_ids=[info.local_rank])
        else:
            dist.barrier()


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    if not (info.distributed and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return [float(x) for x in t.tolist()]


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's value on every rank (decisions that must agree, e.g. where to resume)."""
    if not (info.distributed and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_strategy(requested: str, info: DistInfo, trainable: list[str]) -> str:
    if not info.distributed:
        return "single"
    if requested != "auto":
        return requested
    # Sharding pays off once the 7.6 B LLM carries optimizer state; the small parts replicate.
    return "fsdp" if "llm" in trainable else "ddp"


def wrap_model(
    model: Any, *, strategy: str, info: DistInfo, precision: str, find_unused: bool = False
) -> Any:
    model.to(info.device)
    if strategy == "single":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.local_rank] if info.device.startswith("cuda") else None
        # A text-only batch leaves the audio path without gradients; DDP must be told to
        # expect that or it waits forever for those parameters' all-reduce.
        return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if precision == "bf16"
            else MixedPrecisionPolicy()
        )
        for module in model.modules():
            if type(module).__name__ in SHARD_LAYER_CLASSES:
                fully_shard(module, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    raise ValueError(f"unknown strategy {strategy!r} (single, ddp, fsdp)")


def unwrap(model: Any) -> Any:
    """The HF (or peft) model inside a DDP wrapper; FSDP2 modules are their own model."""
    return model.module if hasattr(model, "module") and hasattr(model, "no_sync") else model


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
