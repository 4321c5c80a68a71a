#!/usr/bin/env python
"""Full-size AF3 (random bf16 weights) on one GPU: the job mix's real-time factor, batched.

No download: the architecture comes from bench/gpu_af3.py's config (AF-Whisper encoder,
Qwen2.5-7B LLM) filled with random numbers; the tokenizer and feature extractor come from a
tiny checkpoint built here (the prompts' token ids are all < 4000, valid rows of the big
embedding table). Earshot's own runtime runs it: ``AF3Runtime.generate_batch`` with the
batching policy of Triton's af3_llm (``earshot.af3.batching``), i.e. the steady state of
a server whose dynamic batcher always has work queued. The Triton hop itself (gRPC, shared
memory) is not in these figures.

Measures, each under a time budget:
  job mix        a one-hour speech file: per 600 s segment caption, events and summary,
                 plus one transcription per silero-vad speech chunk (as analyze_audio asks),
                 audio encoded once per clip -> audio seconds per wall second (RTFx)
  transcription  the speech chunks alone -> RTFx
  decode step    batch 1, eager vs static cache vs compiled (CUDA graphs), ms per step
  bf16 fidelity  the chunks' greedy tokens batched vs one at a time: how often they differ

Random weights never end an answer, so every answer runs to its token limit. The limits are
set to real answer lengths (``--tokens-per-speech-s`` for transcripts, ~2.5 words/s; fixed
lengths for caption, events and summary: about 2,500 output tokens per 600 s of speech), not
to the budgets, which are ceilings.

    python bench/gpu_throughput.py            # one H100/H200: a few minutes (needs the project
                                              # installed: pip install -e '.[model]')
    python bench/gpu_throughput.py --smoke    # tiny dims on CPU: checks the script itself

Prints a table; writes JSON to $OUT/gpu_throughput.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_af3
import throughput

from earshot.engines.base import Ask

# Real answer lengths in tokens (random weights never stop on their own).
FIXED_TOKENS = {"caption": 32, "events": 160, "summarize": 160}


def realistic(call: throughput.Call, tokens_per_speech_s: float) -> throughput.Call:
    """The call with each ask's limit set to a real answer's length."""
    from earshot import prompts

    by_prompt = {prompts.PROMPTS[t]: n for t, n in FIXED_TOKENS.items()}
    asks = []
    for ask in call.asks:
        if ask.prompt in by_prompt:
            limit = by_prompt[ask.prompt]
        else:
            assert ask.audio is not None
            limit = math.ceil(len(call.audios[ask.audio]) / throughput.SR * tokens_per_speech_s) + 8
        asks.append(Ask(ask.prompt, audio=ask.audio, max_new_tokens=limit, think=ask.think))
    return throughput.Call(asks, call.audios, call.seconds)


def runtime_for(model: Any, processor_dir: Path, device: str) -> Any:
    from transformers import AutoProcessor

    from earshot.af3.runtime import AF3Runtime

    return AF3Runtime(model, AutoProcessor.from_pretrained(processor_dir), model_dir=processor_dir, device=device)


def encode_all(runtime: Any, audios: Sequence[Any], max_windows: int = 40) -> list[Any]:
    """Each clip's embeddings, windows of several clips per encoder forward (as af_whisper)."""
    import torch

    from earshot.af3.runtime import window_token_counts

    feats = [runtime.features(a) for a in audios]
    out: list[Any] = []
    group: list[tuple[Any, Any]] = []

    def flush() -> None:
        if group:
            emb = runtime.encode_features(torch.cat([f for f, _ in group]), torch.cat([m for _, m in group]))
            out.extend(torch.split(emb, [sum(window_token_counts(m)) for _, m in group]))
            group.clear()

    for f, m in feats:
        if group and sum(int(x.shape[0]) for x, _ in group) + int(f.shape[0]) > max_windows:
            flush()
        group.append((f, m))
    flush()
    return out


def run_mix(runtime: Any, calls: Sequence[throughput.Call], only_transcribe: bool = False) -> dict[str, Any]:
    """Every call's rows at once through the af3_llm batching policy; wall time incl. encoding."""
    from earshot import prompts
    from earshot.af3.batching import DEFAULT_MAX_BATCH_ROWS, DEFAULT_MAX_BATCH_TOKENS, batches, row_length
    from earshot.af3.chat import Turn
    from earshot.af3.runtime import Row

    sync = _sync(runtime.device)
    sync()
    t0 = time.perf_counter()
    rows = []
    for call in calls:
        used = sorted(
            {a.audio for a in call.asks if a.audio is not None and (not only_transcribe or a.prompt == prompts.TRANSCRIBE)}
        )
        embeds = dict(zip(used, encode_all(runtime, [call.audios[i] for i in used]), strict=True))
        for ask in call.asks:
            if ask.audio not in embeds:
                continue
            prompt = runtime.prompt([Turn("user", ask.prompt, audio=1)])
            rows.append(Row(prompt, [embeds[ask.audio]], int(ask.max_new_tokens or 1)))
    tokens = 0
    for batch in batches(rows, DEFAULT_MAX_BATCH_ROWS, DEFAULT_MAX_BATCH_TOKENS, row_length):
        tokens += sum(g.new_tokens for g in runtime.generate_batch(batch))
    sync()
    wall = time.perf_counter() - t0
    audio_s = sum(c.seconds for c in calls)
    return {"rows": len(rows), "new_tokens": tokens, "wall_s": wall, "audio_s": audio_s, "rtfx": audio_s / wall}


def decode_step(runtime: Any, audio: Any, mode: str, steps: int) -> float:
    """Seconds per decode step at batch 1 for a 30 s chunk's prompt, by difference of two runs."""
    from earshot.af3.chat import Turn
    from earshot.af3.compiled import apply_decode_mode
    from earshot.af3.runtime import Row

    apply_decode_mode(runtime, mode, max_cache_len=2048 if mode != "eager" else None)
    row = Row(runtime.prompt([Turn("user", "Transcribe the input speech.", audio=1)]), [runtime.encode(audio)], 16)
    sync = _sync(runtime.device)

    def timed(n: int) -> float:
        sync()
        t0 = time.perf_counter()
        runtime.generate_batch([Row(row.prompt, row.audio_embeds, n)])
        sync()
        return time.perf_counter() - t0

    timed(16), timed(16 + steps)  # compile / record graphs for both lengths, warm caches
    short = min(timed(16) for _ in range(2))
    long = min(timed(16 + steps) for _ in range(2))
    apply_decode_mode(runtime, "eager")
    return (long - short) / steps


def bf16_agreement(runtime: Any, chunks: Sequence[Any], tokens: int) -> dict[str, Any]:
    """Greedy tokens of the chunks batched together vs each alone (same weights, same dtype)."""
    from earshot.af3.chat import Turn
    from earshot.af3.runtime import Row

    embeds = encode_all(runtime, chunks)
    prompt = runtime.prompt([Turn("user", "Transcribe the input speech.", audio=1)])
    rows = [Row(prompt, [e], tokens) for e in embeds]
    together = runtime.generate_batch(rows)
    alone = [runtime.generate_batch([r])[0] for r in rows]
    differ = [i for i, (a, b) in enumerate(zip(together, alone, strict=True)) if a.text != b.text]
    return {"rows": len(rows), "tokens_per_row": tokens, "rows_differing": len(differ),
            "fraction_differing": len(differ) / max(1, len(rows))}


def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--tokens-per-speech-s", type=float, default=3.3, help="transcript tokens per second of speech")
    ap.add_argument("--decode-steps", type=int, default=64)
    ap.add_argument("--fidelity-rows", type=int, default=32)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this long")
    ap.add_argument("--smoke", action="store_true", help="tiny dims on CPU: checks the script")
    args = ap.parse_args(argv)

    torch, transformers = gpu_af3._imports()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA device visible; use --smoke to check the script on CPU")
    if args.smoke:
        args.minutes = min(args.minutes, 3.0)
        args.decode_steps = min(args.decode_steps, 8)
        args.fidelity_rows = min(args.fidelity_rows, 4)
    started = time.perf_counter()
    from earshot.af3.tiny import build_tiny_checkpoint
    from earshot.config import Settings

    tmp = Path(tempfile.mkdtemp(prefix="earshot-gpu-throughput-"))
    tiny = build_tiny_checkpoint(tmp / "tiny", with_think=False)
    config = gpu_af3.af3_config(args.smoke)
    from transformers import AutoTokenizer

    sound = AutoTokenizer.from_pretrained(tiny).convert_tokens_to_ids("<sound>")
    assert isinstance(sound, int)
    config.audio_token_id = sound
    model = gpu_af3.build(torch, config, device, torch.bfloat16 if not args.smoke else torch.float32)
    runtime = runtime_for(model, tiny, device)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)"
    print(f"AF3 {'smoke' if args.smoke else 'full size'} on {name}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}", flush=True)

    audio = throughput.speech_file(args.minutes)
    calls = [realistic(c, args.tokens_per_speech_s) for c in throughput.segment_calls(audio, Settings(model_path=str(tiny)))]
    chunks = [a for c in calls for a in c.audios[1:]]
    print(f"{args.minutes:g} min: {len(calls)} segments, {len(chunks)} speech chunks, "
          f"{sum(a.max_new_tokens or 0 for c in calls for a in c.asks)} output tokens", flush=True)
    result: dict[str, Any] = {"device": name, "smoke": args.smoke, "minutes": args.minutes,
                              "segments": len(calls), "chunks": len(chunks), "skipped": []}

    def step(key: str, fn: Callable[[], Any]) -> None:
        if time.perf_counter() - started > args.budget_s:
            result["skipped"].append(key)
            return
        try:
            result[key] = fn()
        except Exception as exc:  # one failed measure must not lose the others
            result[key] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        print(f"{key}: {result[key]}", flush=True)

    step("decode_step_eager_s", lambda: decode_step(runtime, chunks[0], "eager", args.decode_steps))
    step("decode_step_static_s", lambda: decode_step(runtime, chunks[0], "static", args.decode_steps))
    if device == "cuda":
        step("decode_step_compiled_s", lambda: decode_step(runtime, chunks[0], "compiled", args.decode_steps))
    step("job_mix", lambda: run_mix(runtime, calls))
    step("transcription", lambda: run_mix(runtime, calls, only_transcribe=True))
    if device == "cuda":
        # The same with the compiled decode step (the cache grows to the longest call; each new
        # batch shape is compiled once, which this first pass pays for).
        from earshot.af3.compiled import apply_decode_mode

        apply_decode_mode(runtime, "compiled")
        step("job_mix_compiled", lambda: run_mix(runtime, calls))
        step("transcription_compiled", lambda: run_mix(runtime, calls, only_transcribe=True))
        apply_decode_mode(runtime, "eager")
    step("bf16_agreement", lambda: bf16_agreement(runtime, chunks[: args.fidelity_rows], 48))
    if device == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["total_s"] = time.perf_counter() - started

    print()
    for key in ("job_mix", "transcription", "job_mix_compiled", "transcription_compiled"):
        r = result.get(key)
        if isinstance(r, dict) and "rtfx" in r:
            print(f"{key:14s} RTFx {r['rtfx']:8.1f}  ({r['audio_s']:.0f} s audio in {r['wall_s']:.1f} s, "
                  f"{r['rows']} prompts, {r['new_tokens']} tokens)")
    for mode in ("eager", "static", "compiled"):
        v = result.get(f"decode_step_{mode}_s")
        if isinstance(v, float):
            print(f"decode step b1 {mode:9s} {v * 1000:7.2f} ms")
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "gpu_throughput.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
