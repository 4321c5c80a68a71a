#!/usr/bin/env python
"""Full-size Audio Flamingo 3 on one GPU with random bf16 weights: how fast are the stages?

No download: the architecture is built from its config (AF-Whisper encoder like
Whisper-large-v3: 32 layers, d=1280; Qwen2.5-7B LLM: 28 layers, hidden 3584, 28 heads,
4 KV heads, FFN 18944, vocab 152064) and filled with random numbers. Speed does not depend
on the values, so the figures hold for the real checkpoint on the same software path
(transformers, eager decode with a dynamic KV cache: what Earshot's python backend runs).

Measures, at batch 1 / 8 / 32:
  encoder   30 s windows per second (mel features -> encoder -> projector)
  prefill   prompt tokens per second (one 30 s window = 750 audio tokens + a short prompt)
  decode    generated tokens per second (all sequences of the batch together)
and the implied real-time factor of transcription (encode + prefill + N output tokens per
30 s window). Prints a table; writes JSON to $OUT/gpu_af3.json when OUT is set.

    python bench/gpu_af3.py                 # on a CUDA machine, < 4 min on one H100
    python bench/gpu_af3.py --smoke         # tiny dims on CPU: checks the script itself

Needs torch with CUDA and transformers >= 5.23 (AudioFlamingo3 classes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

AUDIO_TOKENS_PER_WINDOW = 750
WINDOW_S = 30.0


def _imports() -> tuple[Any, Any]:
    try:
        import torch
    except ImportError as exc:
        sys.exit(f"gpu_af3: PyTorch is not installed ({exc}); install torch with CUDA support")
    try:
        import transformers
        from transformers import AudioFlamingo3ForConditionalGeneration  # noqa: F401
    except ImportError as exc:
        sys.exit(
            "gpu_af3: transformers with Audio Flamingo 3 support is not installed "
            f"({exc}); install it with: pip install 'transformers>=5.23,<5.24'"
        )
    return torch, transformers


def af3_config(smoke: bool) -> Any:
    from transformers import AudioFlamingo3Config, AudioFlamingo3EncoderConfig, Qwen2Config

    if smoke:
        audio = AudioFlamingo3EncoderConfig(
            num_mel_bins=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            hidden_size=64, max_source_positions=1500,
        )
        text = Qwen2Config(
            vocab_size=4000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
        )
    else:
        # Whisper-large-v3's encoder geometry, as AF-Whisper uses it.
        audio = AudioFlamingo3EncoderConfig(
            num_mel_bins=128, num_hidden_layers=32, num_attention_heads=20, intermediate_size=5120,
            hidden_size=1280, max_source_positions=1500,
        )
        # Qwen2.5-7B; transformers' Qwen2Config defaults differ, so every field is explicit.
        text = Qwen2Config(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6, hidden_act="silu", tie_word_embeddings=False,
            sliding_window=None, use_sliding_window=False,
        )
    return AudioFlamingo3Config(audio_config=audio, text_config=text, audio_token_id=151669 if not smoke else 3999)


def build(torch: Any, config: Any, device: str, dtype: Any) -> Any:
    """Constructed directly on the device in bf16; transformers' own init fills the weights.

    No meta-device detour: construction on the device also computes the non-persistent
    buffers (rotary frequencies) correctly, and initialising 8 B values on a GPU takes
    seconds.
    """
    from transformers import AudioFlamingo3ForConditionalGeneration

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AudioFlamingo3ForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype).eval()


class Clock:
    def __init__(self, torch: Any, device: str) -> None:
        self.torch = torch
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], *, iters: int, warmup: int) -> float:
        """Median seconds per call."""
        for _ in range(warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            self.sync()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)


def bench_encoder(torch: Any, model: Any, clock: Clock, batch: int, device: str, dtype: Any, iters: int) -> float:
    feats = torch.randn(batch, 128, 3000, device=device, dtype=dtype)
    mask = torch.ones(batch, 3000, device=device, dtype=torch.long)
    with torch.inference_mode():
        return clock.time(lambda: model.get_audio_features(feats, mask), iters=iters, warmup=1)


def _lm(model: Any) -> tuple[Any, Any]:
    return model.model.language_model, model.lm_head


def bench_prefill(torch: Any, model: Any, clock: Clock, batch: int, tokens: int, iters: int) -> float:
    lm, head = _lm(model)
    hidden = lm.config.hidden_size
    embeds = torch.randn(batch, tokens, hidden, device=head.weight.device, dtype=head.weight.dtype) * 0.02

    def run() -> Any:
        out = lm(inputs_embeds=embeds, use_cache=True)
        return head(out.last_hidden_state[:, -1])  # logits of the last position only

    with torch.inference_mode():
        return clock.time(run, iters=iters, warmup=1)


def bench_decode(torch: Any, model: Any, clock: Clock, batch: int, context: int, steps: int) -> float:
    """Seconds per decode step for the whole batch (greedy, dynamic KV cache)."""
    lm, head = _lm(model)
    device, dtype = head.weight.device, head.weight.dtype
    with torch.inference_mode():
        embeds = torch.randn(batch, context, lm.config.hidden_size, device=device, dtype=dtype) * 0.02
        out = lm(inputs_embeds=embeds, use_cache=True)
        cache = out.past_key_values
        next_ids = head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
        for _ in range(2):  # warm-up steps on a copy-free path
            out = lm(input_ids=next_ids, past_key_values=cache, use_cache=True)
            next_ids = head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
        clock.sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            out = lm(input_ids=next_ids, past_key_values=cache, use_cache=True)
            next_ids = head(out.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
        clock.sync()
        return (time.perf_counter() - t0) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,8,32", help="batch sizes (comma-separated)")
    parser.add_argument("--prompt-tokens", type=int, default=40, help="text tokens around the audio")
    parser.add_argument("--out-tokens", type=int, default=100,
                        help="tokens generated per 30 s window for the RTF (speech: ~75 words)")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=200.0,
                        help="skip what is left once this much time has passed")
    parser.add_argument("--smoke", action="store_true", help="tiny dims, any device: checks the script")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    args = parser.parse_args(argv)

    torch, transformers = _imports()
    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_af3: no CUDA device visible (torch.cuda.is_available() is False); use --smoke to check on CPU")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    dtype = torch.bfloat16
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    started = time.perf_counter()

    config = af3_config(args.smoke)
    t0 = time.perf_counter()
    model = build(torch, config, device, dtype)
    clock = Clock(torch, device)
    clock.sync()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    enc_params = sum(p.numel() for p in model.model.audio_tower.parameters())
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(f"AF3 {'smoke' if args.smoke else 'full size'}: {n_params / 1e9:.2f} B parameters "
          f"(encoder {enc_params / 1e6:.0f} M), bf16 on {gpu}; built in {build_s:.1f} s "
          f"(torch {torch.__version__}, transformers {transformers.__version__})", flush=True)

    prompt = AUDIO_TOKENS_PER_WINDOW + args.prompt_tokens
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []

    def over_budget(what: str) -> bool:
        if time.perf_counter() - started > args.budget_s:
            skipped.append(what)
            return True
        return False

    for batch in batches:
        row: dict[str, Any] = {"batch": batch}
        try:
            if not over_budget(f"encoder b{batch}"):
                t = bench_encoder(torch, model, clock, batch, device, dtype, args.iters)
                row["encoder_s"] = t
                row["encoder_windows_per_s"] = batch / t
            if not over_budget(f"prefill b{batch}"):
                t = bench_prefill(torch, model, clock, batch, prompt, args.iters)
                row["prefill_s"] = t
                row["prefill_tokens_per_s"] = batch * prompt / t
            if not over_budget(f"decode b{batch}"):
                t = bench_decode(torch, model, clock, batch, prompt, args.decode_steps)
                row["decode_step_s"] = t
                row["decode_tokens_per_s"] = batch / t
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {exc}".splitlines()[0]
            torch.cuda.empty_cache()
        if {"encoder_s", "prefill_s", "decode_step_s"} <= row.keys():
            seconds = row["encoder_s"] + row["prefill_s"] + args.out_tokens * row["decode_step_s"]
            row["rtf"] = seconds / (WINDOW_S * batch)
            row["x_realtime"] = 1.0 / row["rtf"]
        rows.append(row)
        print(f"  batch {batch} done ({time.perf_counter() - started:.0f} s)", flush=True)

    long_prefill: dict[str, Any] = {}
    if not over_budget("prefill 600 s clip"):
        tokens = 20 * AUDIO_TOKENS_PER_WINDOW + args.prompt_tokens
        t = bench_prefill(torch, model, clock, 1, tokens, max(1, args.iters - 1))
        long_prefill = {"tokens": tokens, "seconds": t, "tokens_per_s": tokens / t}

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-"

    print()
    print(f"{'batch':>5} {'enc win/s':>10} {'prefill tok/s':>14} {'decode tok/s':>13} {'RTF':>8} {'x realtime':>11}")
    for r in rows:
        print(f"{r['batch']:>5} {fmt(r.get('encoder_windows_per_s'), '10.1f')} "
              f"{fmt(r.get('prefill_tokens_per_s'), '14.0f')} {fmt(r.get('decode_tokens_per_s'), '13.1f')} "
              f"{fmt(r.get('rtf'), '8.4f')} {fmt(r.get('x_realtime'), '11.1f')}"
              + (f"  {r['error']}" if "error" in r else ""))
    if long_prefill:
        print(f"prefill of a 600 s clip ({long_prefill['tokens']} tokens, batch 1): "
              f"{long_prefill['seconds']:.3f} s = {long_prefill['tokens_per_s']:.0f} tokens/s")
    print(f"RTF = (encode + prefill of {prompt} tokens + {args.out_tokens} decode steps) / 30 s of audio "
          "per sequence; lower is faster")
    if skipped:
        print(f"skipped (over the {args.budget_s:.0f} s budget): {', '.join(skipped)}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    if peak is not None:
        print(f"peak GPU memory {peak:.1f} GiB; total {time.perf_counter() - started:.0f} s")

    result = {
        "device": gpu,
        "smoke": args.smoke,
        "parameters": n_params,
        "encoder_parameters": enc_params,
        "build_s": build_s,
        "prompt_tokens": prompt,
        "out_tokens": args.out_tokens,
        "rows": rows,
        "prefill_600s": long_prefill,
        "peak_gpu_gib": peak,
        "skipped": skipped,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "total_s": time.perf_counter() - started,
    }
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "gpu_af3.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
