"""One training step on AF3: the batch layout, the loss on assistant tokens, the optimizer step.

Imports torch and transformers only (no settings, storage or database), so the GPU benchmark
can run it on a bare machine with the real model architecture.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

IGNORE = -100


@dataclass
class Batch:
    """A padded micro-batch. Audio windows of every sample are stacked in sample order, which is
    the order ``masked_scatter`` fills the ``<sound>`` positions in (row-major over the batch)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    input_features: torch.Tensor | None
    feature_mask: torch.Tensor | None
    skipped: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def n_samples(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def n_targets(self) -> int:
        # The loss shifts labels by one: the first position never is a target.
        return int((self.labels[:, 1:] != IGNORE).sum())

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) so host-to-GPU copies can be asynchronous."""
        return Batch(
            input_ids=self.input_ids.pin_memory(),
            attention_mask=self.attention_mask.pin_memory(),
            labels=self.labels.pin_memory(),
            input_features=None if self.input_features is None else self.input_features.pin_memory(),
            feature_mask=None if self.feature_mask is None else self.feature_mask.pin_memory(),
            skipped=self.skipped,
        )

    def to(self, device: torch.device | str, feature_dtype: torch.dtype) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device, non_blocking=True),
            attention_mask=self.attention_mask.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            input_features=None
            if self.input_features is None
            else self.input_features.to(device, feature_dtype, non_blocking=True),
            feature_mask=None
            if self.feature_mask is None
            else self.feature_mask.to(device, non_blocking=True),
            skipped=self.skipped,
        )


def collate(
    samples: Sequence[tuple[list[int], list[int], torch.Tensor | None, torch.Tensor | None]],
    *,
    pad_id: int,
    skipped: list[tuple[str, str, str]] | None = None,
) -> Batch:
    """Right-pad (ids, labels, features, mask) samples into one Batch."""
    width = max(len(s[0]) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    attn = torch.zeros((len(samples), width), dtype=torch.long)
    feats: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    for row, (sid, slab, feat, mask) in enumerate(samples):
        n = len(sid)
        ids[row, :n] = torch.tensor(sid, dtype=torch.long)
        labels[row, :n] = torch.tensor(slab, dtype=torch.long)
        attn[row, :n] = 1
        if feat is not None and mask is not None:
            feats.append(feat)
            masks.append(mask)
    return Batch(
        input_ids=ids,
        attention_mask=attn,
        labels=labels,
        input_features=torch.cat(feats) if feats else None,
        feature_mask=torch.cat(masks) if masks else None,
        skipped=list(skipped or []),
    )


# ---- precision ---------------------------------------------------------------------------------


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is bf16 on GPUs and fp32 on CPUs (CPU bf16 matmuls are slow and imprecise)."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    return precision


def load_dtype(precision: str) -> torch.dtype:
    """The dtype weights are loaded in; under ``bf16`` trainable ones are upcast afterwards."""
    return torch.float32 if precision == "fp32" else torch.bfloat16


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def upcast_trainable(model: torch.nn.Module) -> None:
    """fp32 master weights for what learns: bf16 can't hold updates ~1e-3 of a weight's size."""
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()


# ---- optimizer and schedule ---------------------------------------------------------------------


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def build_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """AdamW; biases and norm weights (1-D) get no weight decay, as in AF3's and LLaVA's recipes."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in trainable_parameters(model):
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {"lr": lr, "betas": betas, "eps": eps}
    if fused:
        kwargs["fused"] = True
    return torch.optim.AdamW([g for g in groups if g["params"]], **kwargs)


def lr_factor(
    step: int,
    total: int,
    *,
    schedule: str,
    warmup: int,
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    A pure function of the step, so a resumed run continues the schedule exactly without
    saving scheduler state.
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        decayed = 1.0 - progress
    else:
        decayed = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decayed


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ---- the step -----------------------------------------------------------------------------------


@dataclass
class StepResult:
    loss_sum: float  # summed token losses of this rank's micro-batches
    targets: int  # target tokens of this rank
    tokens: int  # non-padding input tokens (text + audio) of this rank
    samples: int
    grad_norm: float | None


def feature_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the audio encoder's first conv: input features must match it."""
    for name, p in model.named_parameters():
        if "audio_tower" in name and "conv1" in name:
            return p.dtype
    return next(model.parameters()).dtype


def forward_loss(model: torch.nn.Module, batch: Batch, *, num_items: float) -> torch.Tensor:
    """Sum of token losses over ``num_items`` targets (the whole accumulation window)."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        input_features=batch.input_features,
        input_features_mask=batch.feature_mask,
        labels=batch.labels,
        use_cache=False,
        num_items_in_batch=torch.tensor(num_items, device=batch.input_ids.device),
    )
    loss: torch.Tensor = out.loss
    return loss


def _no_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
    # DDP all-reduces on every backward unless told this micro-batch is not the last.
    no_sync = getattr(model, "no_sync", None)
    if not sync and callable(no_sync):
        ctx: contextlib.AbstractContextManager[Any] = no_sync()
        return ctx
    return contextlib.nullcontext()


def _set_fsdp_sync(model: torch.nn.Module, sync: bool) -> None:
    # FSDP2 modules reduce-scatter after every backward unless told this one is not the last.
    setter = getattr(model, "set_requires_gradient_sync", None)
    if callable(setter):
        setter(sync)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[Batch],
    *,
    device: str,
    precision: str,
    max_grad_norm: float,
    num_items: float | None = None,
) -> StepResult:
    """Forward/backward every micro-batch, then one optimizer step.

    The loss is normalised by the target tokens of the whole accumulation window, so long and
    short answers weigh per token, not per micro-batch. Under DDP pass ``num_items`` = global
    targets / world size: DDP's gradient averaging then yields the global per-token mean.
    """
    fdtype = feature_dtype(model)
    moved = [b.to(device, fdtype) for b in micro_batches]
    targets = sum(b.n_targets for b in moved)
    denom = float(max(1.0, num_items if num_items is not None else targets))
    loss_sum = 0.0
    for i, batch in enumerate(moved):
        last = i == len(moved) - 1
        _set_fsdp_sync(model, last)
        with _no_sync(model, last), autocast(precision, device):
            loss = forward_loss(model, batch, num_items=denom)
        loss.backward()
        loss_sum += float(loss.detach()) * denom
    params = [p for _, p in trainable_parameters(model)]
    grad_norm: float | None = None
    if max_grad_norm > 0:
        norm: Any = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        # Under FSDP the norm is a DTensor: materialise it before reading it.
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        grad_norm = float(norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(
        loss_sum=loss_sum,
        targets=targets,
        tokens=sum(b.n_tokens for b in moved),
        samples=sum(b.n_samples for b in moved),
        grad_norm=grad_norm,
    )


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
