"""Benchmark: samples/s and tokens/s of one AF3 training step (Earshot's own step code).

    # CPU, tiny random model (what CI-size machines can run)
    python bench/train_step.py

    # GPU, the full-size architecture (AF-Whisper 637 M + projector 17 M + Qwen2.5-7B 7.6 B)
    # with random bf16 weights built from a config: nothing is downloaded.
    python bench/train_step.py --device cuda --full-size

    # Check the full-size config on any machine (meta tensors, no memory, no GPU)
    python bench/train_step.py --full-size --dry-run

Stage 1 trains the projector (frozen parts bf16, projector fp32 master + bf16 autocast: the
runner's ``bf16``); stage 3 trains everything. On one GPU the full model's stage 3 uses the
runner's ``bf16-pure`` (bf16 weights and AdamW states, ~62 GiB before activations) with
gradient checkpointing; production runs it with FSDP across GPUs instead. A stage that runs
out of memory is retried with a smaller batch and reported as such.

The GPU path imports only torch, transformers and earshot.training.{step,parts}.
Tokens count every non-padding input position (text + audio); ``targets`` are the answer
tokens the loss is taken on. Never part of the test run's pass/fail.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from earshot.training.parts import (
    count_parameters,
    enable_gradient_checkpointing,
    prepare_model,
)
from earshot.training.step import Batch, build_optimizer, collate, train_step

TOKENS_PER_WINDOW = 750


@dataclass
class StagePlan:
    name: str
    trainable: list[str]
    precision: str
    gradient_checkpointing: bool
    # (batch size, audio windows per sample), tried in order until one fits in memory
    shapes: list[tuple[int, int]]


@dataclass
class StageReport:
    stage: str
    trainable: list[str]
    precision: str
    gradient_checkpointing: bool
    batch_size: int = 0
    windows_per_sample: int = 0
    tokens_per_sample: int = 0
    trainable_params: int = 0
    steps: int = 0
    step_s: float = 0.0
    samples_per_s: float = 0.0
    tokens_per_s: float = 0.0
    target_tokens_per_s: float = 0.0
    audio_s_per_s: float = 0.0
    peak_memory_gib: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    out_of_memory: list[str] = field(default_factory=list)
    error: str | None = None


# ---- models -------------------------------------------------------------------------------------


def full_size_config() -> Any:
    """AF3's architecture: the Whisper-large-v3-shaped AF-Whisper encoder and Qwen2.5-7B."""
    from transformers import AudioFlamingo3Config, AudioFlamingo3EncoderConfig, Qwen2Config

    audio = AudioFlamingo3EncoderConfig(
        num_mel_bins=128,
        num_hidden_layers=32,
        num_attention_heads=20,
        hidden_size=1280,
        intermediate_size=5120,
        max_source_positions=1500,
    )
    text = Qwen2Config(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    return AudioFlamingo3Config(audio_config=audio, text_config=text, audio_token_id=151646)


def build_full_size(device: str, dtype: torch.dtype) -> Any:
    from transformers import AudioFlamingo3ForConditionalGeneration

    config = full_size_config()
    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        # Allocated and randomly initialised on the device itself: 8.3 B parameters would
        # take minutes to initialise on the host.
        with torch.device(device):
            model = AudioFlamingo3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def build_tiny(workdir: Path) -> Any:
    from transformers import AudioFlamingo3ForConditionalGeneration

    from earshot.af3.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(workdir / "tiny")
    return AudioFlamingo3ForConditionalGeneration.from_pretrained(path, dtype=torch.float32)


# ---- synthetic batches ----------------------------------------------------------------------------


def synthetic_batch(
    *, batch: int, windows: int, prompt: int, answer: int, vocab: int, sound_id: int, seed: int
) -> Batch:
    """Full 30 s windows (750 audio tokens each), a prompt and an answer of random tokens."""
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(batch):
        text = torch.randint(10, min(vocab, 150000), (prompt + answer,), generator=g).tolist()
        ids = text[:2] + [sound_id] * (windows * TOKENS_PER_WINDOW) + text[2:]
        labels = [-100] * (len(ids) - answer) + ids[-answer:]
        feats = torch.randn(windows, 128, 3000, generator=g)
        mask = torch.ones(windows, 3000, dtype=torch.long)
        samples.append((ids, labels, feats, mask))
    return collate(samples, pad_id=0)


# ---- the measurement ------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_stage(model: Any, plan: StagePlan, args: argparse.Namespace) -> StageReport:
    report = StageReport(
        stage=plan.name,
        trainable=plan.trainable,
        precision=plan.precision,
        gradient_checkpointing=plan.gradient_checkpointing,
    )
    base_dtype = torch.bfloat16 if plan.precision.startswith("bf16") else torch.float32
    for p in model.parameters():
        p.requires_grad_(False)
        if p.dtype != base_dtype:
            p.data = p.data.to(base_dtype)
    if plan.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
    model = prepare_model(
        model,
        trainable=plan.trainable,
        precision="bf16" if plan.precision == "bf16" else "fp32",
        gradient_checkpointing=False,
    )
    report.trainable_params = count_parameters(model)["trainable"]
    vocab = int(model.config.text_config.vocab_size)
    sound_id = int(model.config.audio_token_id)
    for batch_size, windows in plan.shapes:
        optimizer = None
        try:
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            fused = args.device.startswith("cuda")
            optimizer = build_optimizer(model, lr=1e-5, fused=fused)
            batches = [
                synthetic_batch(
                    batch=batch_size,
                    windows=windows,
                    prompt=args.prompt_tokens,
                    answer=args.answer_tokens,
                    vocab=vocab,
                    sound_id=sound_id,
                    seed=i,
                )
                for i in range(2)
            ]
            precision = "bf16" if plan.precision == "bf16" else "fp32"
            losses: list[float] = []
            for i in range(args.warmup):
                train_step(model, optimizer, [batches[i % 2]], device=args.device,
                           precision=precision, max_grad_norm=1.0)  # fmt: skip
            _sync(args.device)
            t0 = time.perf_counter()
            samples = tokens = targets = 0
            for i in range(args.steps):
                r = train_step(model, optimizer, [batches[i % 2]], device=args.device,
                               precision=precision, max_grad_norm=1.0)  # fmt: skip
                samples += r.samples
                tokens += r.tokens
                targets += r.targets
                losses.append(r.loss_sum / max(1, r.targets))
            _sync(args.device)
            elapsed = time.perf_counter() - t0
            report.batch_size, report.windows_per_sample = batch_size, windows
            report.tokens_per_sample = int(batches[0].n_tokens // batch_size)
            report.steps = args.steps
            report.step_s = elapsed / args.steps
            report.samples_per_s = samples / elapsed
            report.tokens_per_s = tokens / elapsed
            report.target_tokens_per_s = targets / elapsed
            report.audio_s_per_s = samples * windows * 30 / elapsed
            report.loss_first, report.loss_last = losses[0], losses[-1]
            if args.device.startswith("cuda"):
                report.peak_memory_gib = torch.cuda.max_memory_allocated() / 2**30
            break
        except torch.cuda.OutOfMemoryError:
            report.out_of_memory.append(f"batch {batch_size} x {windows} windows")
        finally:
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
                del optimizer
            for p in model.parameters():
                p.grad = None
    else:
        report.error = "out of memory at every shape tried"
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--full-size", action="store_true", help="AF3's real architecture, random bf16 weights")
    ap.add_argument("--dry-run", action="store_true", help="build on the meta device, print sizes, exit")
    ap.add_argument("--stages", default="stage1,stage3")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per stage")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=24)
    ap.add_argument("--answer-tokens", type=int, default=40)
    ap.add_argument("--json", type=Path, default=None, help="also write the report here")
    args = ap.parse_args(argv)

    if args.full_size and args.dry_run:
        model = build_full_size("meta", torch.bfloat16)
        sizes = _part_sizes(model)
        print(json.dumps(sizes, indent=2))
        return 0
    if args.full_size and not args.device.startswith("cuda"):
        ap.error("--full-size needs --device cuda (8.3 B parameters); use --dry-run to check sizes")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("CUDA is not available here")

    if args.full_size:
        args.steps = args.steps or 5
        plans = {
            "stage1": StagePlan("stage1", ["projector"], "bf16", False, [(8, 1), (4, 1), (1, 1)]),
            "stage3": StagePlan(
                "stage3", ["encoder", "projector", "llm"], "bf16-pure", True, [(1, 5), (1, 2), (1, 1)]
            ),
        }
    else:
        args.steps = args.steps or 5
        precision = "bf16" if args.device.startswith("cuda") else "fp32"
        plans = {
            "stage1": StagePlan("stage1", ["projector"], precision, False, [(4, 1)]),
            "stage3": StagePlan("stage3", ["encoder", "projector", "llm"], precision, False, [(4, 1)]),
        }

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if args.full_size:
            model = build_full_size(args.device, torch.bfloat16)
        else:
            model = build_tiny(Path(tmp)).to(args.device)
    build_s = time.perf_counter() - t0
    env = {
        "device": torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "threads": torch.get_num_threads(),
        "model": "full-size AF3 architecture, random bf16 weights" if args.full_size else "tiny random AF3",
        "parameters": _part_sizes(model),
        "build_s": round(build_s, 1),
    }
    print(json.dumps(env, indent=2), flush=True)
    reports = []
    for name in args.stages.split(","):
        report = run_stage(model, plans[name], args)
        reports.append(asdict(report))
        print(json.dumps(asdict(report), indent=2), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"env": env, "stages": reports}, indent=2))
    _table(reports)
    return 0 if all(r["error"] is None for r in reports) else 1


def _part_sizes(model: Any) -> dict[str, int]:
    from earshot.training.parts import part_of

    sizes: dict[str, int] = {"encoder": 0, "projector": 0, "llm": 0}
    for name, p in model.named_parameters():
        part = part_of(name)
        if part is not None:
            sizes[part] += p.numel()
    sizes["total"] = sum(sizes.values())
    return sizes


def _table(reports: list[dict[str, Any]]) -> None:
    print(f"\n{'stage':8} {'batch':>9} {'step s':>8} {'samples/s':>10} {'tokens/s':>10} {'peak GiB':>9}")
    for r in reports:
        shape = f"{r['batch_size']}x{r['windows_per_sample']}w"
        peak = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(
            f"{r['stage']:8} {shape:>9} {r['step_s']:8.3f} {r['samples_per_s']:10.2f} "
            f"{r['tokens_per_s']:10.0f} {peak:>9}"
            + (f"  OOM: {', '.join(r['out_of_memory'])}" if r["out_of_memory"] else "")
        )


if __name__ == "__main__":
    sys.exit(main())
