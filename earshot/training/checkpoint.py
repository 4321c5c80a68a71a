"""Where a stage writes, and how a stage finds where to start.

A stage's output prefix (a local directory or ``s3://``), as the chart passes it::

    <output>/checkpoints/step-00000500/{trainable.pt, optimizer.pt, state.json}
    <output>/checkpoints/LATEST          {"step": 500, "dir": "step-00000500"}, written last
    <output>/model/                      a complete AF3 checkpoint (+ think/), at the stage's end
    <output>/DONE.json                   {"model_uri": ..., "metrics": ...}, written last of all

A marker file is only written after everything it points at is complete, so a crash at any
moment leaves either the previous state or the new one, never half of one. Training
checkpoints hold the trainable parameters (fp32 master copies under bf16) and the full
optimizer state, gathered to rank 0 for any strategy.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from earshot import storage
from earshot.config import Settings
from earshot.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

LATEST = "LATEST"
DONE = "DONE.json"
STATE = "state.json"
# Files of a model directory that save_pretrained writes itself; everything else (tokenizer,
# feature extractor, chat template) is carried over from the starting checkpoint.
_WEIGHT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json")


def _join(base: str, *parts: str) -> str:
    return storage.join_uri(base, *parts)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def read_json(uri: str, *, settings: Settings) -> dict[str, Any] | None:
    try:
        data = json.loads(storage.read_bytes(uri, max_bytes=16 * 1024 * 1024, settings=settings))
    except StorageError as exc:
        if exc.code == "not_found":
            return None
        raise
    return data if isinstance(data, dict) else None


def write_json(uri: str, data: dict[str, Any], *, settings: Settings) -> None:
    storage.put_bytes(uri, json.dumps(data, indent=2, default=str).encode(), "application/json", settings=settings)


# ---- publishing directories ---------------------------------------------------------------------


@contextmanager
def staged_dir(uri: str, *, settings: Settings) -> Iterator[Path]:
    """A local directory whose files end up at ``uri`` once the block succeeds.

    Local outputs are written beside the target and renamed into place; S3 outputs are staged
    in a temp dir and uploaded file by file.
    """
    ref = storage.parse_uri(uri)
    if ref.scheme == "file":
        final = Path(ref.key.rstrip("/"))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        try:
            yield tmp
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    with tempfile.TemporaryDirectory(prefix="earshot-stage-") as tmp_name:
        tmp = Path(tmp_name)
        yield tmp
        push_dir(tmp, uri, settings=settings)


def push_dir(local: Path, uri: str, *, settings: Settings) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.put_file(_join(uri, path.relative_to(local).as_posix()), path, settings=settings)


def fetch_dir(uri: str, *, cache: Path, settings: Settings) -> Path:
    """A local copy of a directory URI (local paths are used in place)."""
    local, found = storage.mirror_prefix(uri, cache, settings=settings)
    if storage.parse_uri(uri).scheme == "s3" and not found:
        raise ConfigError(f"nothing under {uri}", code="not_found")
    return local


def model_dir(uri: str, *, cache: Path, settings: Settings) -> Path:
    """Local directory of an AF3 checkpoint named by a path or an s3:// prefix (mirrored under
    ``cache``, the curriculum's cache directory, like the audio and the checkpoints)."""
    local, found = storage.mirror_prefix(uri, cache, settings=settings)
    if storage.parse_uri(uri).scheme == "s3" and not found:
        raise ConfigError(f"no model files under {uri}", code="model_not_found")
    path = local
    if not (path / "config.json").exists():
        raise ConfigError(f"no AF3 checkpoint (config.json) at {uri}", code="model_not_found")
    return path


# ---- training checkpoints -----------------------------------------------------------------------


def _state_dict_options(*, full: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=True, ignore_frozen_params=True)


def gather_training_state(
    model: Any, optimizer: torch.optim.Optimizer, *, distributed: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trainable weights and optimizer state keyed by parameter name, full on rank 0.

    Every rank must call it (FSDP gathers shards collectively).
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_state_dict_options(full=distributed))
    return msd, osd


def save_checkpoint(
    output: str,
    *,
    step: int,
    model: Any,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    is_main: bool,
    distributed: bool,
    keep: int,
    settings: Settings,
) -> str | None:
    """Write checkpoint ``step`` and move LATEST to it; returns its URI on rank 0."""
    msd, osd = gather_training_state(model, optimizer, distributed=distributed)
    if not is_main:
        return None
    name = checkpoint_name(step)
    uri = _join(output, "checkpoints", name)
    with staged_dir(uri, settings=settings) as tmp:
        torch.save(msd, tmp / "trainable.pt")
        torch.save(osd, tmp / "optimizer.pt")
        (tmp / STATE).write_text(json.dumps({**state, "step": step}, indent=2, default=str))
    write_json(_join(output, "checkpoints", LATEST), {"step": step, "dir": name}, settings=settings)
    prune_checkpoints(output, keep=keep, current=step, settings=settings)
    log.info("checkpoint %s written", uri)
    return uri


def prune_checkpoints(output: str, *, keep: int, current: int, settings: Settings) -> None:
    base = _join(output, "checkpoints") + "/"
    steps: set[int] = set()
    for info in storage.list_objects(base, settings=settings):
        rel = storage.parse_uri(info.uri).key.split("/checkpoints/", 1)[-1]
        head = rel.split("/", 1)[0]
        if head.startswith("step-") and head[5:].isdigit():
            steps.add(int(head[5:]))
    for old in sorted(s for s in steps if s != current)[: max(0, len(steps) - keep)]:
        storage.delete_prefix(_join(output, "checkpoints", checkpoint_name(old)) + "/", settings=settings)


def load_checkpoint(
    uri: str, *, model: Any, optimizer: torch.optim.Optimizer, cache: Path, settings: Settings
) -> dict[str, Any]:
    """Restore trainable weights and optimizer state from a checkpoint dir; returns its state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    local = fetch_dir(uri, cache=cache, settings=settings)
    msd = torch.load(local / "trainable.pt", map_location="cpu", weights_only=True)
    osd = torch.load(local / "optimizer.pt", map_location="cpu", weights_only=True)
    expected = {n for n, p in _named_trainable(model)}
    missing = expected - set(msd)
    if missing:
        raise ConfigError(
            f"checkpoint {uri} does not match this stage's trainable parts "
            f"(missing {len(missing)} tensors, e.g. {sorted(missing)[0]})",
            code="checkpoint_mismatch",
        )
    set_state_dict(
        model,
        optimizer,
        model_state_dict=msd,
        optim_state_dict=osd,
        options=StateDictOptions(full_state_dict=True, strict=False),
    )
    state = json.loads((local / STATE).read_text())
    return state if isinstance(state, dict) else {}


def _named_trainable(model: Any) -> list[tuple[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    # Names as the state-dict API spells them (wrapper prefixes removed).
    names = set(get_model_state_dict(model, options=_state_dict_options(full=False)))
    return [(n, None) for n in names]


# ---- where to start ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    model_uri: str
    checkpoint_uri: str | None = None
    done: dict[str, Any] | None = None


def latest_checkpoint(output: str, *, settings: Settings) -> str | None:
    latest = read_json(_join(output, "checkpoints", LATEST), settings=settings)
    if not latest or not isinstance(latest.get("dir"), str):
        return None
    return _join(output, "checkpoints", latest["dir"])


def describe_source(uri: str, *, settings: Settings) -> tuple[str, str] | None:
    """What a --resume-from URI holds: ("checkpoint"|"model", uri to use)."""
    state = read_json(_join(uri, STATE), settings=settings)
    if state is not None:
        return "checkpoint", uri
    done = read_json(_join(uri, DONE), settings=settings)
    if done is not None and isinstance(done.get("model_uri"), str):
        return "model", done["model_uri"]
    if storage.exists(_join(uri, "config.json"), settings=settings):
        return "model", uri
    latest = latest_checkpoint(uri, settings=settings)
    if latest is not None:
        return "checkpoint", latest
    return None


def resolve_start(*, output: str, resume_from: str | None, settings: Settings, restart: bool = False) -> Start:
    """Pick the starting point of a stage.

    1. ``resume_from`` that is a training checkpoint: resume it (an operator asked for it).
    2. The stage's own output: done -> nothing to do; a checkpoint -> resume (a restarted Job).
    3. ``resume_from`` as a model: the previous stage's output or the base checkpoint.
    """
    source = describe_source(resume_from, settings=settings) if resume_from else None
    if resume_from and source is None:
        raise ConfigError(
            f"--resume-from {resume_from}: no checkpoint, stage output or AF3 model there",
            code="not_found",
        )
    if source is not None and source[0] == "checkpoint":
        state = read_json(_join(source[1], STATE), settings=settings) or {}
        return Start(model_uri=str(state.get("base_model", "")), checkpoint_uri=source[1])
    if not restart:
        done = read_json(_join(output, DONE), settings=settings)
        if done is not None:
            return Start(model_uri=str(done.get("model_uri", "")), done=done)
        own = latest_checkpoint(output, settings=settings)
        if own is not None:
            state = read_json(_join(own, STATE), settings=settings) or {}
            return Start(model_uri=str(state.get("base_model", "")), checkpoint_uri=own)
    if source is None:
        raise ConfigError(
            "nothing to start from: pass --resume-from or set base_model in the curriculum",
            code="bad_config",
        )
    return Start(model_uri=source[1])


# ---- the stage's model ---------------------------------------------------------------------------


def save_stage_model(
    output: str,
    *,
    model: Any,
    start_dir: Path,
    base_dtype: torch.dtype,
    is_lora: bool,
    is_main: bool,
    distributed: bool,
    settings: Settings,
) -> str | None:
    """Write ``<output>/model``: loadable by AF3Runtime.load and the Triton models as it is.

    Weights are cast back to the dtype the stage started from. A LoRA stage leaves the base
    weights untouched (copied) and writes its adapter to ``think/``; other stages carry over the
    ``think/`` adapter they started with.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from earshot.training.dist import unwrap

    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=distributed, cpu_offload=True)
    )
    if not is_main:
        return None
    uri = _join(output, "model")
    inner = unwrap(model)
    with staged_dir(uri, settings=settings) as tmp:
        for item in sorted(start_dir.iterdir()):
            if item.name == "think" and is_lora:
                continue
            if not is_lora and (item.name in _WEIGHT_FILES or item.name.startswith("model")):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        if is_lora:
            from earshot.af3.think import write_non_lora_trainables

            inner.save_pretrained(str(tmp / "think"), state_dict=full)
            # the release's think/ layout: only the LoRA is trained here, so its non-LoRA part is empty
            write_non_lora_trainables(tmp / "think", {})
        else:
            cast = {
                k: v.to(base_dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in full.items()
            }
            inner.config.dtype = base_dtype
            inner.save_pretrained(str(tmp), state_dict=cast)
    return uri


def mark_done(output: str, *, model_uri: str, metrics: dict[str, Any], settings: Settings) -> None:
    write_json(_join(output, DONE), {"model_uri": model_uri, "metrics": metrics}, settings=settings)
