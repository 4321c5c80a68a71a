"""Model calls and CPU seconds per hour of audio: transcription before and after speech chunks.

Before (the old way): one transcription prompt per <= 600 s segment, whatever it holds,
with a fixed 256-token limit. After: silero-vad finds speech, chunks of <= 30 s, one
"Transcribe the input speech." per chunk, all chunks of a segment in one batched call, budgets
from the seconds of speech. The file is half silence (alternating speech and silence).

Also measured on the same machine: the chunk prompts batched in one generate vs one generate
each, and think/plain rows as two separate batches vs PEFT's per-row adapter selection.

    python bench/fidelity_calls.py                # tiny random AF3, 10 min file (CPU, a few minutes)
    python bench/fidelity_calls.py --minutes 4    # quicker
    python bench/fidelity_calls.py --model-path DIR   # a real checkpoint (GPU recommended)

Prints a table; writes JSON to bench/results/fidelity_calls.json (or --out). The tiny model's
words are noise: its token counts are whatever its random weights emit within each limit, so
the CPU figures show the shape of the cost (calls, audio heard, tokens allowed), not AF3's.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from earshot.af3.chat import Turn
from earshot.af3.runtime import AF3Runtime, Row
from earshot.analysis import analyze_audio
from earshot.audio.plan import segment_stream
from earshot.audio.vad import speech_chunks
from earshot.config import Settings
from earshot.engines.base import Ask, Generation
from earshot.engines.local import LocalEngine

SR = 16000
# the transcription prompt and limit Earshot used before speech chunks
OLD_TRANSCRIBE = (
    "Transcribe the input speech. Put each sentence on its own line, starting with its start "
    "and end time in seconds, like: [12.0 - 15.5] sentence."
)
OLD_LIMIT = 256


@dataclass
class Tally:
    calls: int = 0
    prompts: int = 0
    heard_s: float = 0.0
    new_tokens: int = 0
    truncated: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0


class Counting(LocalEngine):
    """The real local engine; every call counted."""

    def __init__(self, inner: LocalEngine, tally: Tally) -> None:
        super().__init__(inner.runtime, inner.settings, model_id=inner.model_id)
        self.tally = tally

    def generate(self, asks: Sequence[Ask], *, audios: Sequence[np.ndarray] = (), temperature: float = 0.0) -> list[Generation]:
        out = super().generate(asks, audios=audios, temperature=temperature)
        self.tally.calls += 1
        self.tally.prompts += len(asks)
        self.tally.heard_s += sum(a.shape[0] for a in audios) / SR
        self.tally.new_tokens += sum(g.new_tokens for g in out)
        self.tally.truncated += sum(g.truncated for g in out)
        return out


@contextmanager
def timed(tally: Tally) -> Iterator[None]:
    c0, w0 = time.process_time(), time.perf_counter()
    yield
    tally.cpu_s += time.process_time() - c0
    tally.wall_s += time.perf_counter() - w0


def half_silent_file(minutes: float) -> tuple[np.ndarray, float]:
    """Alternating 60 s of eSpeak NG speech and 60 s of silence; returns audio and speech seconds."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's test helpers
    from tests.fixtures.speech import spoken

    block = spoken(60.0)
    pieces, speech = [], 0.0
    total = int(minutes * 60 * SR)
    pos, talk = 0, True
    while pos < total:
        piece = block if talk else np.zeros(60 * SR, np.float32)
        piece = piece[: total - pos]
        pieces.append(piece)
        speech += piece.shape[0] / SR if talk else 0.0
        pos += piece.shape[0]
        talk = not talk
    return np.concatenate(pieces), speech


def per_hour(value: float, audio_s: float) -> float:
    return value * 3600.0 / audio_s


def bench_batching(runtime: AF3Runtime, chunks: list[np.ndarray], limit: int) -> dict[str, float]:
    """Chunk prompts: one batched generate vs one generate per chunk (greedy, same limits)."""
    embeds = [runtime.encode(c) for c in chunks]
    prompt = runtime.prompt([Turn("user", "Transcribe the input speech.", audio=1)])
    rows = [Row(prompt, [e], limit) for e in embeds]
    runtime.generate_batch(rows[:1])  # warm
    t0 = time.perf_counter()
    alone = [runtime.generate_batch([r])[0] for r in rows]
    t1 = time.perf_counter()
    together = runtime.generate_batch(rows)
    t2 = time.perf_counter()
    return {
        "rows": len(rows),
        "unbatched_s": round(t1 - t0, 3),
        "batched_s": round(t2 - t1, 3),
        "speedup": round((t1 - t0) / max(t2 - t1, 1e-9), 2),
        "identical": float(alone == together),
    }


def bench_adapter_batching(runtime: AF3Runtime, clip: np.ndarray, n: int, limit: int) -> dict[str, float]:
    """n think + n plain rows: two separate batches (what the runtime does) vs one batch with
    PEFT's per-row adapter selection (LoRA only: per-row selection cannot swap the non-LoRA
    think weights, so it is not a correct way to run AF3's whole think adapter)."""
    import torch
    from peft.tuners.lora.layer import LoraLayer
    from peft.tuners.lora.model import _adapter_names_pre_forward_hook

    plain_e = runtime.encode(clip)
    prompt = runtime.prompt([Turn("user", "What is happening?", audio=1)], think=True)
    rows = [Row(prompt, [plain_e], limit, think=i % 2 == 1) for i in range(2 * n)]
    runtime.generate_batch(rows[:2])  # warm both modes
    t0 = time.perf_counter()
    runtime.generate_batch(rows)
    separate = time.perf_counter() - t0

    # per-row selection: LoRA on, each row names its adapter ("__base__" = none)
    names = ["think" if r.think else "__base__" for r in rows]
    model = runtime.model
    hooks = []
    with runtime.gate.hold(False):
        model.enable_adapters()
        model.set_adapter("think")
        for module in model.modules():
            if isinstance(module, LoraLayer) and isinstance(module, torch.nn.Module):
                hooks.append(module.register_forward_pre_hook(
                    partial(_adapter_names_pre_forward_hook, adapter_names=names), with_kwargs=True
                ))
        try:
            t0 = time.perf_counter()
            runtime._run([Row(r.prompt, r.audio_embeds, r.max_new_tokens) for r in rows], 0.0, adapter=False)
            per_row = time.perf_counter() - t0
        finally:
            for h in hooks:
                h.remove()
            model.disable_adapters()
    return {"rows": 2 * n, "separate_batches_s": round(separate, 3), "per_row_selection_s": round(per_row, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--segment-s", type=float, default=600.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "fidelity_calls.json"))
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory()
    model_path = args.model_path
    if model_path is None:
        from earshot.af3.tiny import build_tiny_checkpoint

        model_path = str(build_tiny_checkpoint(Path(tmp.name) / "tiny"))
    settings = Settings(model_path=model_path, device="cpu", dtype="float32")
    engine = LocalEngine.from_settings(settings)

    audio, speech_s = half_silent_file(args.minutes)
    audio_s = audio.shape[0] / SR
    segments = [s.samples for s in segment_stream([audio], max_segment_s=args.segment_s)]
    speech_chunks(np.zeros(SR, np.float32))  # load the VAD model outside the timings

    before, after, vad = Tally(), Tally(), Tally()
    counted_before = Counting(engine, before)
    for seg in segments:
        with timed(before):
            counted_before.generate([Ask(OLD_TRANSCRIBE, audio=0, max_new_tokens=OLD_LIMIT)], audios=[seg])
    counted_after = Counting(engine, after)
    chunk_audio: list[np.ndarray] = []
    for seg in segments:
        with timed(vad):
            found = speech_chunks(seg)
        chunk_audio += [seg[round(c.start * SR) : round(c.end * SR)] for c in found]
        with timed(after):
            analyze_audio(counted_after, seg, tasks=["transcribe"], settings=settings)
    # analyze_audio ran the VAD again inside "after": report the model part without it
    model_after_cpu = after.cpu_s - vad.cpu_s

    batching = bench_batching(engine.runtime, chunk_audio[:8], limit=48)
    adapter = bench_adapter_batching(engine.runtime, chunk_audio[0], n=4, limit=24)

    result: dict[str, Any] = {
        "machine": platform.processor() or platform.machine(),
        "model": "tiny random AF3" if args.model_path is None else args.model_path,
        "audio_s": round(audio_s, 1),
        "speech_s": round(speech_s, 1),
        "segments": len(segments),
        "before": {
            "calls_per_hour": round(per_hour(before.calls, audio_s), 1),
            "prompts_per_hour": round(per_hour(before.prompts, audio_s), 1),
            "audio_heard_s_per_hour": round(per_hour(before.heard_s, audio_s), 1),
            "token_limit_per_hour": round(per_hour(OLD_LIMIT * before.prompts, audio_s)),
            "new_tokens_per_hour": round(per_hour(before.new_tokens, audio_s)),
            "cpu_s_per_hour": round(per_hour(before.cpu_s, audio_s), 1),
            "truncated": before.truncated,
        },
        "after": {
            "calls_per_hour": round(per_hour(after.calls, audio_s), 1),
            "prompts_per_hour": round(per_hour(after.prompts, audio_s), 1),
            "audio_heard_s_per_hour": round(per_hour(after.heard_s, audio_s), 1),
            "new_tokens_per_hour": round(per_hour(after.new_tokens, audio_s)),
            "cpu_s_per_hour": round(per_hour(after.cpu_s, audio_s), 1),
            "vad_cpu_s_per_hour": round(per_hour(vad.cpu_s, audio_s), 1),
            "model_cpu_s_per_hour": round(per_hour(model_after_cpu, audio_s), 1),
            "truncated": after.truncated,
        },
        "chunk_batching": batching,
        "adapter_batching": adapter,
    }
    b, a = result["before"], result["after"]
    print(f"file: {audio_s:.0f} s, {speech_s:.0f} s of it speech, {len(segments)} segment(s); "
          f"model: {result['model']}; figures per hour of audio")
    print(f"{'':24}{'before':>12}{'after':>12}")
    for key in ("calls_per_hour", "prompts_per_hour", "audio_heard_s_per_hour", "new_tokens_per_hour", "cpu_s_per_hour"):
        print(f"{key:24}{b[key]:>12}{a[key]:>12}")
    print(f"{'  of which VAD':24}{'':>12}{a['vad_cpu_s_per_hour']:>12}")
    print(f"chunk prompts, {batching['rows']} rows: unbatched {batching['unbatched_s']} s, batched "
          f"{batching['batched_s']} s ({batching['speedup']}x), identical={bool(batching['identical'])}")
    print(f"think/plain mix, {adapter['rows']} rows: separate batches {adapter['separate_batches_s']} s, "
          f"per-row adapter selection {adapter['per_row_selection_s']} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
