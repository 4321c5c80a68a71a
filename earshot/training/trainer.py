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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from earshot import storage
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
    st: StageConfig, *, cache_dir: str, info: DistInfo
) -> tuple[list[list[Prepared]], SkipLog, int]:
    """Read and check every dataset of a stage. Local rank 0 goes first so S3 audio is fetched
    once per node; the others then find it in the shared cache."""
    cache = AudioCache(cache_dir)

    def scan() -> tuple[list[list[Prepared]], SkipLog, int]:
        skips = SkipLog()
        per_dataset: list[list[Prepared]] = []
        total = 0
        for ds in st.datasets:
            think = st.think_prompt if ds.think_prompt is None else ds.think_prompt
            records = read_records(ds.uri, dataset=ds.label, think=think, skips=skips)
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


def run_stage(
    cur: Curriculum,
    stage_name: str,
    *,
    output: str | None = None,
    resume_from: str | None = None,
    restart: bool = False,
    database_url: str | None = None,
    on_step: StepHook | None = None,
) -> StageResult:
    st = cur.stage(stage_name)
    info = init_distributed(cur.device)
    out = stage_output(cur, st, output)
    source = resume_from or default_resume_from(cur, st, out)
    start = broadcast_object(info, ckpt.resolve_start(output=out, resume_from=source, restart=restart))
    if start.done is not None:
        log.info("[%s] already done: %s (pass --restart to train it again)", st.name, out)
        return StageResult(stage=st.name, status="already_done", output=out, model_uri=start.model_uri)
    if not start.model_uri:
        raise ConfigError(f"[{st.name}] cannot tell which model to start from", code="bad_config")

    precision = resolve_precision(st.precision, info.device)
    strategy = resolve_strategy(st.strategy, info, list(st.trainable))
    cache_root = Path(cur.cache_dir)
    model_path = ckpt.model_dir(start.model_uri)

    from transformers import AudioFlamingo3ForConditionalGeneration, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    tokenizer = processor.tokenizer
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
    sizes = count_parameters(model)

    per_dataset, skips, n_records = load_stage_data(st, cache_dir=cur.cache_dir, info=info)
    items = [p for ds in per_dataset for p in ds]
    if not items:
        raise ConfigError(
            f"[{st.name}] no usable records: {skips.total} of {n_records} skipped "
            f"({dict(skips.counts)}); first problems: {skips.examples[:3]}",
            code="no_training_data",
        )
    text_only = any(not p.record.sounds for p in items)
    model = wrap_model(
        model,
        strategy=strategy,
        info=info,
        precision=precision,
        find_unused=text_only and bool({"encoder", "projector"} & set(st.trainable)),
    )
    optimizer = build_optimizer(
        model,
        lr=st.learning_rate,
        weight_decay=st.weight_decay,
        betas=st.adam_betas,
        eps=st.adam_eps,
        fused=info.device.startswith("cuda") and strategy != "fsdp",
    )
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

    step = 0
    counters = {"tokens": 0, "samples": 0}
    first_loss: float | None = None
    if start.checkpoint_uri:
        state = ckpt.load_checkpoint(
            start.checkpoint_uri, model=model, optimizer=optimizer, cache=cache_root / "checkpoints"
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
        counters = {"tokens": int(state.get("tokens", 0)), "samples": int(state.get("samples", 0))}
        first_loss = state.get("first_loss")
        for key, reason, message in state.get("skipped_runtime", []):
            skips.add(key, reason, message)
        log.info("[%s] resuming at step %d/%d from %s", st.name, step, total, start.checkpoint_uri)
    resumed_from = step if start.checkpoint_uri else None

    recorder = Recorder(database_url, enabled=cur.record_metrics and info.is_main)
    recorder.start(
        name=cur.run,
        run_uri=_parent(out),
        config=cur.model_dump(mode="json"),
        stage=st.name,
        position=STAGE_ORDER.index(st.name) if st.name in STAGE_ORDER else len(STAGE_ORDER),
        fields={
            "trainable": list(st.trainable),
            "precision": precision,
            "strategy": strategy,
            "world_size": info.world_size,
            "device": info.device,
            "total_steps": total,
            "output_uri": out,
            "records_total": n_records,
            "records_skipped": skips.total,
            "skipped_reasons": dict(skips.counts),
        },
        resumed_from_step=resumed_from,
    )
    log.info(
        "[%s] %s; %d/%d parameters train; %d records (%d skipped %s); %d steps of %d samples "
        "(%s x %d accum x %d ranks); %s, %s, %s",
        st.name,
        "+".join(st.trainable),
        sizes["trainable"],
        sizes["total"],
        n_records,
        skips.total,
        dict(skips.counts),
        total,
        plan.per_step,
        st.batch_size,
        st.gradient_accumulation,
        info.world_size,
        precision,
        strategy,
        info.device,
    )

    dataset = ConversationDataset(
        items,
        tokenizer=tokenizer,
        feature_extractor=processor.feature_extractor,
        sound_id=sound_id,
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
    batches = iter(loader)
    runtime_skips: list[tuple[str, str, str]] = []
    last_loss: float | None = None
    window = {"t": time.perf_counter(), "tokens": 0.0, "samples": 0.0}
    stage_t0 = time.perf_counter()
    stage_tokens = 0.0
    stage_samples = 0.0
    last_ckpt: str | None = None
    if info.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    try:
        while step < total:
            micro = [next(batches) for _ in range(st.gradient_accumulation)]
            for b in micro:
                for key, reason, message in b.skipped:
                    if skips.add(key, reason, message):
                        runtime_skips.append((key, reason, message))
            local_targets = float(sum(b.n_targets for b in micro))
            global_targets = all_reduce_sum(info, [local_targets])[0]
            # Seeded per step and rank: dropout (LoRA) draws the same numbers after a resume.
            torch.manual_seed(st.seed * 1_000_003 + step * info.world_size + info.rank)
            lr = st.learning_rate * lr_factor(
                step, total, schedule=st.lr_schedule, warmup=warmup, min_ratio=st.min_lr_ratio
            )
            set_lr(optimizer, lr)
            result = train_step(
                model,
                optimizer,
                micro,
                device=info.device,
                precision=precision,
                max_grad_norm=st.max_grad_norm,
                num_items=global_targets / info.world_size,
            )
            step += 1
            loss_sum, targets, tokens, samples = all_reduce_sum(
                info,
                [result.loss_sum, float(result.targets), float(result.tokens), float(result.samples)],
            )
            loss = loss_sum / max(1.0, targets)
            if not math.isfinite(loss):
                raise FloatingPointError(f"[{st.name}] loss is {loss} at step {step}")
            last_loss = loss
            if first_loss is None:
                first_loss = loss
            counters["tokens"] += int(tokens)
            counters["samples"] += int(samples)
            window["tokens"] += tokens
            window["samples"] += samples
            stage_tokens += tokens
            stage_samples += samples
            metrics = {
                "step": step,
                "loss": loss,
                "lr": lr,
                "grad_norm": result.grad_norm,
                "tokens": int(tokens),
                "samples": int(samples),
            }
            if step == 1 or step % st.log_every_steps == 0 or step == total:
                now = time.perf_counter()
                elapsed = max(1e-9, now - window["t"])
                tps = window["tokens"] / elapsed
                sps = window["samples"] / elapsed
                window = {"t": now, "tokens": 0.0, "samples": 0.0}
                log.info(
                    "[%s] step %d/%d loss %.4f lr %.2e tokens/s %.0f samples/s %.2f skipped %d",
                    st.name, step, total, loss, lr, tps, sps, skips.total,
                )  # fmt: skip
                recorder.progress(
                    {
                        "step": step,
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": result.grad_norm,
                        "tokens_per_s": tps,
                        "samples_per_s": sps,
                    },
                    {
                        "step": step,
                        "last_loss": loss,
                        "first_loss": first_loss,
                        "tokens": counters["tokens"],
                        "samples": counters["samples"],
                        "tokens_per_s": tps,
                        "samples_per_s": sps,
                        "records_skipped": skips.total,
                        "skipped_reasons": dict(skips.counts),
                    },
                )
            if st.save_every_steps and step % st.save_every_steps == 0 and step < total:
                last_ckpt = ckpt.save_checkpoint(
                    out,
                    step=step,
                    model=model,
                    optimizer=optimizer,
                    state={
                        "stage": st.name,
                        "total_steps": total,
                        "base_model": start.model_uri,
                        "tokens": counters["tokens"],
                        "samples": counters["samples"],
                        "first_loss": first_loss,
                        "last_loss": loss,
                        "skipped_runtime": runtime_skips,
                        "config": _config_digest(st),
                    },
                    is_main=info.is_main,
                    distributed=info.distributed,
                    keep=st.keep_checkpoints,
                )
                barrier(info)
                recorder.update({"checkpoint_uri": last_ckpt})
            if on_step is not None:
                on_step(step, metrics)
    except BaseException as exc:
        recorder.finish(
            status="failed",
            fields={"error": f"{type(exc).__name__}: {exc}"[:2000], "step": step},
            last=False,
        )
        raise

    elapsed = max(1e-9, time.perf_counter() - stage_t0)
    peak = int(torch.cuda.max_memory_allocated()) if info.device.startswith("cuda") else None
    model_uri = ckpt.save_stage_model(
        out,
        model=model,
        start_dir=model_path,
        base_dtype=base_dtype,
        is_lora=st.is_lora,
        is_main=info.is_main,
        distributed=info.distributed,
    )
    result_obj = StageResult(
        stage=st.name,
        status="succeeded",
        output=out,
        model_uri=model_uri,
        steps=step,
        total_steps=total,
        first_loss=first_loss,
        last_loss=last_loss,
        resumed_from_step=resumed_from,
        records=n_records,
        skipped=skips.as_dict(),
        tokens=counters["tokens"],
        samples=counters["samples"],
        tokens_per_s=stage_tokens / elapsed if stage_tokens else None,
        samples_per_s=stage_samples / elapsed if stage_samples else None,
        peak_memory_bytes=peak,
    )
    if info.is_main and model_uri is not None:
        ckpt.mark_done(out, model_uri=model_uri, metrics=result_obj.as_dict())
    barrier(info)
    recorder.finish(
        status="succeeded",
        fields={
            "step": step,
            "first_loss": first_loss,
            "last_loss": last_loss,
            "tokens": counters["tokens"],
            "samples": counters["samples"],
            "tokens_per_s": result_obj.tokens_per_s,
            "samples_per_s": result_obj.samples_per_s,
            "records_skipped": skips.total,
            "skipped_reasons": dict(skips.counts),
            "model_uri": model_uri,
            "peak_memory_bytes": peak,
        },
        last=cur.is_last(st.name),
    )
    log.info(
        "[%s] done: %d steps, loss %.4f -> %.4f, %d records skipped, model %s",
        st.name,
        step,
        first_loss if first_loss is not None else float("nan"),
        last_loss if last_loss is not None else float("nan"),
        skips.total,
        model_uri,
    )
    return result_obj


def run_curriculum(
    cur: Curriculum,
    *,
    output: str | None = None,
    stages: list[str] | None = None,
    restart: bool = False,
    database_url: str | None = None,
    on_step: StepHook | None = None,
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
            )
        )
    return results
