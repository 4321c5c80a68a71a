"""The stage runner: load, freeze, feed, step, log, checkpoint, resume and export.

``run_stage`` is what ``earshot train run --stage NAME`` (one Kubernetes Job of the training
chart) executes, in one process or under torchrun; ``run_curriculum`` chains the stages the
same way the chart does (stage N starts from stage N-1's output).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from earshot import storage
from earshot.config import Settings
from earshot.errors import ConfigError
from earshot.training import checkpoint as ckpt
from earshot.training.config import STAGE_ORDER, Curriculum, StageConfig
from earshot.training.data import (
    AudioCache,
    Collator,
    ConversationDataset,
    MixturePlan,
    Prepared,
    SkipLog,
    StepSampler,
    prepare_records,
    read_records,
)
from earshot.training.dist import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    resolve_strategy,
    wrap_model,
)
from earshot.training.parts import count_parameters, prepare_model
from earshot.training.records import Recorder
from earshot.training.step import (
    build_optimizer,
    load_dtype,
    lr_factor,
    resolve_precision,
    set_lr,
    train_step,
)

log = logging.getLogger("earshot.training")

StepHook = Callable[[int, dict[str, Any]], None]


@dataclass
class StageResult:
    stage: str
    status: str  # "succeeded" | "already_done"
    output: str
    model_uri: str | None
    steps: int = 0
    total_steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    resumed_from_step: int | None = None
    records: int = 0
    skipped: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0
    samples: int = 0
    tokens_per_s: float | None = None
    samples_per_s: float | None = None
    peak_memory_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- where things are ----------------------------------------------------------------------------


def run_root(cur: Curriculum, output: str | None = None) -> str:
    """The prefix under which each stage writes ``<root>/<stage>``."""
    if output:
        return storage.parse_uri(output).uri.rstrip("/")
    if cur.checkpoint_root:
        return storage.join_uri(cur.checkpoint_root, cur.run)
    raise ConfigError("no output: pass --output or set checkpoint_root in the curriculum", code="bad_config")


def stage_output(cur: Curriculum, st: StageConfig, output: str | None) -> str:
    if output:
        return storage.parse_uri(output).uri.rstrip("/")
    if st.output:
        return storage.parse_uri(st.output).uri.rstrip("/")
    return storage.join_uri(run_root(cur), st.name)


def default_resume_from(cur: Curriculum, st: StageConfig, out: str) -> str | None:
    """The chart's rule: the previous stage's output, the base model for the first stage."""
    if st.resume_from:
        return st.resume_from
    prev = cur.previous(st.name)
    if prev is not None:
        parent = out.rsplit("/", 1)[0]
        return f"{parent}/{prev.name}"
    return cur.base_model


def _parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


# ---- data -----------------------------------------------------------------------------------------


def load_stage_data(
    st: StageConfig, *, cache_dir: str, info: DistInfo, settings: Settings
) -> tuple[list[list[Prepared]], SkipLog, int]:
    """Read and check every dataset of a stage. Local rank 0 goes first so S3 audio is fetched
    once per node; the others then find it in the shared cache."""
    cache = AudioCache(cache_dir, settings=settings)

    def scan() -> tuple[list[list[Prepared]], SkipLog, int]:
        skips = SkipLog()
        per_dataset: list[list[Prepared]] = []
        total = 0
        for ds in st.datasets:
            think = st.think_prompt if ds.think_prompt is None else ds.think_prompt
            records = read_records(ds.uri, dataset=ds.label, think=think, skips=skips, settings=settings)
            total += len(records)
            per_dataset.append(
                prepare_records(records, cache=cache, max_windows=st.max_audio_windows, skips=skips)
            )
        return per_dataset, skips, total + skips.counts["malformed"]

    if info.local_rank == 0:
        result = scan()
        barrier(info)
    else:
        barrier(info)
        result = scan()
    return result


# ---- the stage -----------------------------------------------------------------------------------


def _base_dtype(model_path: Path, fallback: torch.dtype) -> torch.dtype:
    try:
        cfg = json.loads((model_path / "config.json").read_text())
    except (OSError, ValueError):
        return fallback
    name = cfg.get("dtype") or cfg.get("torch_dtype")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(
        str(name), fallback
    )


def _config_digest(st: StageConfig) -> dict[str, Any]:
    return st.model_dump(mode="json", exclude={"resume_from", "output", "description"})


@dataclass
class _Model:
    """The model of a stage, loaded, frozen and wrapped for the strategy, with its optimizer."""

    model: Any
    processor: Any
    path: Path
    base_dtype: torch.dtype
    sound_id: int
    precision: str
    strategy: str
    sizes: dict[str, int]
    optimizer: torch.optim.Optimizer = field(init=False)  # built by _wrap, after the data is read


@dataclass
class _Progress:
    """What a checkpoint carries forward and the stage result reports."""

    step: int = 0
    tokens: int = 0
    samples: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    resumed_from: int | None = None
    # skips found while training (not while scanning): a checkpoint keeps them for the resume
    runtime_skips: list[tuple[str, str, str]] = field(default_factory=list)


class _Throughput:
    """Tokens and samples per second over the current log window and over this process's run."""

    def __init__(self) -> None:
        self.t0 = self.window_t0 = time.perf_counter()
        self.tokens = self.samples = 0.0
        self.window_tokens = self.window_samples = 0.0

    def add(self, tokens: float, samples: float) -> None:
        self.tokens += tokens
        self.samples += samples
        self.window_tokens += tokens
        self.window_samples += samples

    def close_window(self) -> tuple[float, float]:
        now = time.perf_counter()
        elapsed = max(1e-9, now - self.window_t0)
        rates = self.window_tokens / elapsed, self.window_samples / elapsed
        self.window_t0, self.window_tokens, self.window_samples = now, 0.0, 0.0
        return rates

    def overall(self) -> tuple[float | None, float | None]:
        elapsed = max(1e-9, time.perf_counter() - self.t0)
        return (
            self.tokens / elapsed if self.tokens else None,
            self.samples / elapsed if self.samples else None,
        )


def _load_model(st: StageConfig, model_uri: str, info: DistInfo, *, cache_root: Path, settings: Settings) -> _Model:
    """Load the start model, freeze what the stage does not train, wrap it, build the optimizer."""
    precision = resolve_precision(st.precision, info.device)
    strategy = resolve_strategy(st.strategy, info, list(st.trainable))
    model_path = ckpt.model_dir(model_uri, cache=cache_root / "models", settings=settings)

    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    # FSDP keeps one dtype per shard group: master weights stay fp32 and the mixed-precision
    # policy casts them for compute, instead of bf16 frozen parts next to fp32 trainable ones.
    dtype = torch.float32 if strategy == "fsdp" else load_dtype(precision)
    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(model_path, dtype=dtype)
    base_dtype = _base_dtype(model_path, dtype)
    sound_id = int(model.config.audio_token_id)
    model = prepare_model(
        model,
        trainable=st.trainable,
        precision="fp32" if strategy == "fsdp" else precision,
        gradient_checkpointing=st.gradient_checkpointing,
        lora=st.lora.model_dump() if st.lora else None,
    )
    return _Model(
        model=model,
        processor=processor,
        path=model_path,
        base_dtype=base_dtype,
        sound_id=sound_id,
        precision=precision,
        strategy=strategy,
        sizes=count_parameters(model),
    )


def _wrap(m: _Model, st: StageConfig, info: DistInfo, *, text_only: bool) -> None:
    """DDP/FSDP wrapping and the optimizer; text-only records leave the audio parts unused."""
    m.model = wrap_model(
        m.model,
        strategy=m.strategy,
        info=info,
        precision=m.precision,
        find_unused=text_only and bool({"encoder", "projector"} & set(st.trainable)),
    )
    m.optimizer = build_optimizer(
        m.model,
        lr=st.learning_rate,
        weight_decay=st.weight_decay,
        betas=st.adam_betas,
        eps=st.adam_eps,
        fused=info.device.startswith("cuda") and m.strategy != "fsdp",
    )


def _load_data(
    st: StageConfig, cur: Curriculum, info: DistInfo, settings: Settings
) -> tuple[list[list[Prepared]], SkipLog, int]:
    per_dataset, skips, n_records = load_stage_data(st, cache_dir=cur.cache_dir, info=info, settings=settings)
    if not any(per_dataset):
        raise ConfigError(
            f"[{st.name}] no usable records: {skips.total} of {n_records} skipped "
            f"({dict(skips.counts)}); first problems: {skips.examples[:3]}",
            code="no_training_data",
        )
    return per_dataset, skips, n_records


def _mixture(st: StageConfig, per_dataset: list[list[Prepared]], info: DistInfo) -> tuple[MixturePlan, int, int]:
    """The sampling plan over the datasets, its total steps and the warmup steps."""
    plan = MixturePlan(
        [len(ds) for ds in per_dataset],
        [ds.weight for ds in st.datasets],
        batch_size=st.batch_size,
        accumulation=st.gradient_accumulation,
        world_size=info.world_size,
        rank=info.rank,
        seed=st.seed,
    )
    total = plan.total_steps(epochs=st.epochs, max_steps=st.max_steps)
    warmup = st.warmup_steps or round(st.warmup_ratio * total)
    return plan, total, warmup


def _resume(
    st: StageConfig,
    start: ckpt.Start,
    m: _Model,
    skips: SkipLog,
    *,
    cache_root: Path,
    total: int,
    settings: Settings,
) -> _Progress:
    """Step, counters and skips from the stage's own checkpoint, or a fresh start."""
    if not start.checkpoint_uri:
        return _Progress()
    state = ckpt.load_checkpoint(
        start.checkpoint_uri,
        model=m.model,
        optimizer=m.optimizer,
        cache=cache_root / "checkpoints",
        settings=settings,
    )
    if state.get("stage") not in (None, st.name):
        raise ConfigError(
            f"checkpoint {start.checkpoint_uri} belongs to stage {state.get('stage')!r}",
            code="checkpoint_mismatch",
        )
    if state.get("config") not in (None, _config_digest(st)):
        log.warning(
            "[%s] the stage's settings changed since checkpoint %s was written; resuming "
            "anyway (data order and schedule follow the new settings)",
            st.name,
            start.checkpoint_uri,
        )
    step = int(state["step"])
    runtime_skips = [(key, reason, message) for key, reason, message in state.get("skipped_runtime", [])]
    for key, reason, message in runtime_skips:
        skips.add(key, reason, message)
    log.info("[%s] resuming at step %d/%d from %s", st.name, step, total, start.checkpoint_uri)
    return _Progress(
        step=step,
        tokens=int(state.get("tokens", 0)),
        samples=int(state.get("samples", 0)),
        first_loss=state.get("first_loss"),
        resumed_from=step,
        # kept, so that the next checkpoint still carries them after a second interruption
        runtime_skips=runtime_skips,
    )


def _start_recorder(
    cur: Curriculum,
    st: StageConfig,
    m: _Model,
    info: DistInfo,
    *,
    database_url: str | None,
    out: str,
    total: int,
    plan: MixturePlan,
    skips: SkipLog,
    n_records: int,
    progress: _Progress,
) -> Recorder:
    recorder = Recorder(database_url, enabled=cur.record_metrics and info.is_main)
    recorder.start(
        name=cur.run,
        run_uri=_parent(out),
        config=cur.model_dump(mode="json"),
        stage=st.name,
        position=STAGE_ORDER.index(st.name) if st.name in STAGE_ORDER else len(STAGE_ORDER),
        fields={
            "trainable": list(st.trainable),
            "precision": m.precision,
            "strategy": m.strategy,
            "world_size": info.world_size,
            "device": info.device,
            "total_steps": total,
            "output_uri": out,
            "records_total": n_records,
            "records_skipped": skips.total,
            "skipped_reasons": dict(skips.counts),
        },
        resumed_from_step=progress.resumed_from,
    )
    log.info(
        "[%s] %s; %d/%d parameters train; %d records (%d skipped %s); %d steps of %d samples "
        "(%s x %d accum x %d ranks); %s, %s, %s",
        st.name,
        "+".join(st.trainable),
        m.sizes["trainable"],
        m.sizes["total"],
        n_records,
        skips.total,
        dict(skips.counts),
        total,
        plan.per_step,
        st.batch_size,
        st.gradient_accumulation,
        info.world_size,
        m.precision,
        m.strategy,
        info.device,
    )
    return recorder


def _batches(
    st: StageConfig, m: _Model, items: list[Prepared], plan: MixturePlan, info: DistInfo, *, step: int, total: int
) -> Iterator[Any]:
    """Collated batches from ``step`` on, in the plan's order (a resume continues it)."""
    tokenizer = m.processor.tokenizer
    dataset = ConversationDataset(
        items,
        tokenizer=tokenizer,
        feature_extractor=m.processor.feature_extractor,
        sound_id=m.sound_id,
        max_windows=st.max_audio_windows,
        max_seq_len=st.max_seq_len,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=StepSampler(plan, step, total),
        collate_fn=Collator(int(pad_id)),
        num_workers=st.num_workers,
        pin_memory=info.device.startswith("cuda"),
    )
    return iter(loader)


def _optimizer_step(
    st: StageConfig,
    m: _Model,
    info: DistInfo,
    micro: list[Any],
    progress: _Progress,
    *,
    total: int,
    warmup: int,
) -> tuple[dict[str, Any], float, float]:
    """One optimizer step over ``gradient_accumulation`` micro-batches; returns its metrics and
    the global token and sample counts."""
    local_targets = float(sum(b.n_targets for b in micro))
    global_targets = all_reduce_sum(info, [local_targets])[0]
    step = progress.step
    # Seeded per step and rank: dropout (LoRA) draws the same numbers after a resume.
    torch.manual_seed(st.seed * 1_000_003 + step * info.world_size + info.rank)
    lr = st.learning_rate * lr_factor(step, total, schedule=st.lr_schedule, warmup=warmup, min_ratio=st.min_lr_ratio)
    set_lr(m.optimizer, lr)
    result = train_step(
        m.model,
        m.optimizer,
        micro,
        device=info.device,
        precision=m.precision,
        max_grad_norm=st.max_grad_norm,
        num_items=global_targets / info.world_size,
    )
    progress.step = step = step + 1
    loss_sum, targets, tokens, samples = all_reduce_sum(
        info,
        [result.loss_sum, float(result.targets), float(result.tokens), float(result.samples)],
    )
    loss = loss_sum / max(1.0, targets)
    if not math.isfinite(loss):
        raise FloatingPointError(f"[{st.name}] loss is {loss} at step {step}")
    progress.last_loss = loss
    if progress.first_loss is None:
        progress.first_loss = loss
    progress.tokens += int(tokens)
    progress.samples += int(samples)
    metrics = {
        "step": step,
        "loss": loss,
        "lr": lr,
        "grad_norm": result.grad_norm,
        "tokens": int(tokens),
        "samples": int(samples),
    }
    return metrics, tokens, samples


def _log_progress(
    st: StageConfig,
    metrics: dict[str, Any],
    progress: _Progress,
    rates: tuple[float, float],
    *,
    total: int,
    skips: SkipLog,
    recorder: Recorder,
) -> None:
    tps, sps = rates
    step, loss, lr = metrics["step"], metrics["loss"], metrics["lr"]
    log.info(
        "[%s] step %d/%d loss %.4f lr %.2e tokens/s %.0f samples/s %.2f skipped %d",
        st.name, step, total, loss, lr, tps, sps, skips.total,
    )  # fmt: skip
    recorder.progress(
        {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": metrics["grad_norm"],
            "tokens_per_s": tps,
            "samples_per_s": sps,
        },
        {
            "step": step,
            "last_loss": loss,
            "first_loss": progress.first_loss,
            "tokens": progress.tokens,
            "samples": progress.samples,
            "tokens_per_s": tps,
            "samples_per_s": sps,
            "records_skipped": skips.total,
            "skipped_reasons": dict(skips.counts),
        },
    )


def _save_checkpoint(
    st: StageConfig,
    m: _Model,
    info: DistInfo,
    progress: _Progress,
    *,
    out: str,
    total: int,
    base_model: str,
    settings: Settings,
) -> str | None:
    uri = ckpt.save_checkpoint(
        out,
        step=progress.step,
        model=m.model,
        optimizer=m.optimizer,
        state={
            "stage": st.name,
            "total_steps": total,
            "base_model": base_model,
            "tokens": progress.tokens,
            "samples": progress.samples,
            "first_loss": progress.first_loss,
            "last_loss": progress.last_loss,
            "skipped_runtime": progress.runtime_skips,
            "config": _config_digest(st),
        },
        is_main=info.is_main,
        distributed=info.distributed,
        keep=st.keep_checkpoints,
        settings=settings,
    )
    barrier(info)
    return uri


def _train(
    st: StageConfig,
    m: _Model,
    info: DistInfo,
    batches: Iterator[Any],
    progress: _Progress,
    *,
    total: int,
    warmup: int,
    skips: SkipLog,
    recorder: Recorder,
    out: str,
    base_model: str,
    on_step: StepHook | None,
    settings: Settings,
) -> _Throughput:
    """The step loop: step, log every ``log_every_steps``, checkpoint every ``save_every_steps``."""
    speed = _Throughput()
    if info.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        while progress.step < total:
            micro = [next(batches) for _ in range(st.gradient_accumulation)]
            for b in micro:
                for key, reason, message in b.skipped:
                    if skips.add(key, reason, message):
                        progress.runtime_skips.append((key, reason, message))
            metrics, tokens, samples = _optimizer_step(st, m, info, micro, progress, total=total, warmup=warmup)
            speed.add(tokens, samples)
            step = progress.step
            if step == 1 or step % st.log_every_steps == 0 or step == total:
                _log_progress(
                    st, metrics, progress, speed.close_window(), total=total, skips=skips, recorder=recorder
                )
            if st.save_every_steps and step % st.save_every_steps == 0 and step < total:
                uri = _save_checkpoint(
                    st, m, info, progress, out=out, total=total, base_model=base_model, settings=settings
                )
                recorder.update({"checkpoint_uri": uri})
            if on_step is not None:
                on_step(step, metrics)
    except BaseException as exc:
        recorder.finish(
            status="failed",
            fields={"error": f"{type(exc).__name__}: {exc}"[:2000], "step": progress.step},
            last=False,
        )
        raise
    return speed


def _export(
    cur: Curriculum,
    st: StageConfig,
    m: _Model,
    info: DistInfo,
    progress: _Progress,
    speed: _Throughput,
    *,
    out: str,
    total: int,
    n_records: int,
    skips: SkipLog,
    recorder: Recorder,
    settings: Settings,
) -> StageResult:
    """Write the stage's model and its DONE marker, close the stage's record."""
    tokens_per_s, samples_per_s = speed.overall()
    peak = int(torch.cuda.max_memory_allocated()) if info.device.startswith("cuda") else None
    model_uri = ckpt.save_stage_model(
        out,
        model=m.model,
        start_dir=m.path,
        base_dtype=m.base_dtype,
        is_lora=st.is_lora,
        is_main=info.is_main,
        distributed=info.distributed,
        settings=settings,
    )
    result = StageResult(
        stage=st.name,
        status="succeeded",
        output=out,
        model_uri=model_uri,
        steps=progress.step,
        total_steps=total,
        first_loss=progress.first_loss,
        last_loss=progress.last_loss,
        resumed_from_step=progress.resumed_from,
        records=n_records,
        skipped=skips.as_dict(),
        tokens=progress.tokens,
        samples=progress.samples,
        tokens_per_s=tokens_per_s,
        samples_per_s=samples_per_s,
        peak_memory_bytes=peak,
    )
    if info.is_main and model_uri is not None:
        ckpt.mark_done(out, model_uri=model_uri, metrics=result.as_dict(), settings=settings)
    barrier(info)
    recorder.finish(
        status="succeeded",
        fields={
            "step": progress.step,
            "first_loss": progress.first_loss,
            "last_loss": progress.last_loss,
            "tokens": progress.tokens,
            "samples": progress.samples,
            "tokens_per_s": tokens_per_s,
            "samples_per_s": samples_per_s,
            "records_skipped": skips.total,
            "skipped_reasons": dict(skips.counts),
            "model_uri": model_uri,
            "peak_memory_bytes": peak,
        },
        last=cur.is_last(st.name),
    )
    return result


def run_stage(
    cur: Curriculum,
    stage_name: str,
    *,
    output: str | None = None,
    resume_from: str | None = None,
    restart: bool = False,
    database_url: str | None = None,
    on_step: StepHook | None = None,
    settings: Settings,
) -> StageResult:
    """Train one stage: find where it starts, load model and data, resume, step, export.

    Run, stage and loss rows go to the database at ``database_url``; None records nothing.
    """
    st = cur.stage(stage_name)
    info = init_distributed(cur.device)
    out = stage_output(cur, st, output)
    source = resume_from or default_resume_from(cur, st, out)
    start = broadcast_object(
        info, ckpt.resolve_start(output=out, resume_from=source, restart=restart, settings=settings)
    )
    if start.done is not None:
        log.info("[%s] already done: %s (pass --restart to train it again)", st.name, out)
        return StageResult(stage=st.name, status="already_done", output=out, model_uri=start.model_uri)
    if not start.model_uri:
        raise ConfigError(f"[{st.name}] cannot tell which model to start from", code="bad_config")

    m = _load_model(st, start.model_uri, info, cache_root=Path(cur.cache_dir), settings=settings)
    per_dataset, skips, n_records = _load_data(st, cur, info, settings)
    items = [p for ds in per_dataset for p in ds]
    _wrap(m, st, info, text_only=any(not p.record.sounds for p in items))
    plan, total, warmup = _mixture(st, per_dataset, info)
    progress = _resume(st, start, m, skips, cache_root=Path(cur.cache_dir), total=total, settings=settings)
    recorder = _start_recorder(
        cur, st, m, info, database_url=database_url, out=out, total=total, plan=plan, skips=skips,
        n_records=n_records, progress=progress,
    )  # fmt: skip
    batches = _batches(st, m, items, plan, info, step=progress.step, total=total)
    speed = _train(
        st, m, info, batches, progress, total=total, warmup=warmup, skips=skips, recorder=recorder,
        out=out, base_model=start.model_uri, on_step=on_step, settings=settings,
    )  # fmt: skip
    result = _export(
        cur, st, m, info, progress, speed, out=out, total=total, n_records=n_records, skips=skips,
        recorder=recorder, settings=settings,
    )  # fmt: skip
    log.info(
        "[%s] done: %d steps, loss %.4f -> %.4f, %d records skipped, model %s",
        st.name,
        result.steps,
        result.first_loss if result.first_loss is not None else float("nan"),
        result.last_loss if result.last_loss is not None else float("nan"),
        skips.total,
        result.model_uri,
    )
    return result


def run_curriculum(
    cur: Curriculum,
    *,
    output: str | None = None,
    stages: list[str] | None = None,
    restart: bool = False,
    database_url: str | None = None,
    on_step: StepHook | None = None,
    settings: Settings,
) -> list[StageResult]:
    """Every stage in order, each starting from the previous one's output."""
    root = run_root(cur, output)
    names = stages or [s.name for s in cur.stages]
    results: list[StageResult] = []
    for i, name in enumerate(names):
        st = cur.stage(name)
        out = storage.join_uri(root, name)
        resume = storage.join_uri(root, names[i - 1]) if i > 0 else (st.resume_from or cur.base_model)
        results.append(
            run_stage(
                cur,
                name,
                output=out,
                resume_from=resume,
                restart=restart,
                database_url=database_url,
                on_step=on_step,
                settings=settings,
            )
        )
    return results
