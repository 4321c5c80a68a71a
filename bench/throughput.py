#!/usr/bin/env python
"""Audio seconds per wall second for the real job mix, unbatched vs batched, local vs Triton.

The job mix is what the pipeline sends for a speech file: each <= 600 s segment is one engine
call holding its caption, events and summary prompts plus one transcription prompt per
speech chunk (silero-vad chunks of <= 30 s, token budgets from ``earshot.budgets``), exactly
as ``earshot.analysis.analyze_audio`` builds it. Speech chunks and asks are prepared once, so
every variant times only the engine.

Variants (one run, one table, ratios at the end):
  local unbatched    in-process, one generate per prompt (what every engine did before)
  local batched      in-process, the segment call's asks cut by the batching policy
                     (earshot.af3.batching: chunk prompts apart from segment prompts)
  triton serial      Triton without dynamic batching and one sequence per generate
                     (max_batch_rows=1): the serving path before batching
  triton dynamic     the shipped model repository: dynamic batching, batched generates
at concurrency 1 / 4 / 8 for Triton (N threads = N Celery workers, one segment call each).
The work queue holds the file's segments ``--repeat`` times so concurrency 8 has 8 calls in
flight (a one-hour file has six 600 s segments).

    nice -n 10 python bench/throughput.py                 # tiny checkpoint, CPU servers here
    python bench/throughput.py --minutes 10 --repeat 8 --baseline-calls 2 --serial-concurrency 8
                                                          # what fits a busy 2-core machine

Prints a table; writes JSON to --json or $OUT/throughput.json. Speed figures never go into
tests (bench/results/ holds the runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from earshot import budgets, prompts
from earshot.audio.vad import VadOptions, chunk_samples, speech_chunks
from earshot.config import Settings
from earshot.engines.base import Ask, Engine

SR = 16000
SEGMENT_S = 600.0
TASKS = ("caption", "events", "summarize")


@dataclass
class Call:
    """One segment's engine call: its asks and audios (the segment, then its speech chunks)."""

    asks: list[Ask]
    audios: list[np.ndarray]
    seconds: float


SENTENCES = (
    "The meeting starts at nine and the budget is the first item on the agenda.",
    "Next we discuss the release plan for the coming quarter.",
    "The alarm rang twice during the night, and nobody knew why.",
    "Thank you all for coming today, see you next week.",
    "A dog barked in the distance while the rain kept falling.",
    "Please send the report before Friday so we can review it.",
)


def _say(text: str) -> np.ndarray:
    """One eSpeak NG sentence at 16 kHz (real speech: the VAD must find it)."""
    import io

    import soundfile as sf

    from earshot.speech import espeak

    wave, rate = sf.read(io.BytesIO(espeak(text).wav), dtype="float32")
    n = int(wave.shape[0] * SR / rate)
    return np.interp(np.arange(n) * rate / SR, np.arange(wave.shape[0]), wave).astype(np.float32)


def speech_file(minutes: float, seed: int = 0) -> np.ndarray:
    """Sentences in random order with pauses of 0.2-1.0 s and, now and then, 4 s."""
    said = [_say(t) for t in SENTENCES]
    rng = np.random.default_rng(seed)
    total = int(minutes * 60 * SR)
    pieces, n = [], 0
    while n < total:
        piece = said[int(rng.integers(len(said)))]
        pause = np.zeros(int(SR * (4.0 if rng.random() < 0.05 else rng.uniform(0.2, 1.0))), np.float32)
        pieces += [piece, pause]
        n += len(piece) + len(pause)
    audio = np.concatenate(pieces)[:total]
    # a little noise, so no two segments are the same samples (engines cache by content)
    return audio + rng.normal(0.0, 1e-3, audio.shape[0]).astype(np.float32)


def segment_calls(audio: np.ndarray, settings: Settings) -> list[Call]:
    """The engine call of each 600 s segment, as analyze_audio builds it."""
    options = VadOptions(
        threshold=settings.vad_threshold, max_chunk_s=settings.vad_max_chunk_s, max_gap_s=settings.vad_max_gap_s
    )
    calls = []
    step = int(SEGMENT_S * SR)
    for start in range(0, len(audio), step):
        seg = audio[start : start + step]
        clip_s = len(seg) / SR
        asks = [Ask(prompts.PROMPTS[t], audio=0, max_new_tokens=budgets.budget(t, clip_s=clip_s, settings=settings)) for t in TASKS]
        audios = [seg]
        for chunk in speech_chunks(seg, options=options, sample_rate=SR):
            limit = budgets.budget("transcribe", clip_s=chunk.duration_s, speech_s=chunk.speech_s, settings=settings)
            asks.append(Ask(prompts.TRANSCRIBE, audio=len(audios), max_new_tokens=limit))
            audios.append(chunk_samples(seg, chunk, SR))
        calls.append(Call(asks, audios, clip_s))
    return calls


def varied(calls: Sequence[Call], repeat: int) -> list[Call]:
    """``calls`` ``repeat`` times, each copy with its own faint noise: no two calls carry the
    same samples (engines cache encodings by content), and the speech chunks stay valid, so
    the VAD runs once."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(repeat):
        for c in calls:
            audios = [a + rng.normal(0.0, 1e-3, a.shape[0]).astype(np.float32) for a in c.audios]
            out.append(Call(c.asks, audios, c.seconds))
    return out


def run_calls(work: Callable[[Call], Any], calls: Sequence[Call], concurrency: int) -> dict[str, Any]:
    """``work`` over every call with ``concurrency`` threads pulling from one queue."""
    todo: queue.Queue[Call] = queue.Queue()
    for c in calls:
        todo.put(c)
    errors: list[BaseException] = []
    tokens = [0]
    lock = threading.Lock()

    def worker() -> None:
        while True:
            try:
                call = todo.get_nowait()
            except queue.Empty:
                return
            try:
                gens = work(call)
                with lock:
                    tokens[0] += sum(g.new_tokens for g in gens)
            except BaseException as exc:
                errors.append(exc)
                return

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    audio_s = sum(c.seconds for c in calls)
    return {
        "concurrency": concurrency,
        "calls": len(calls),
        "prompts": sum(len(c.asks) for c in calls),
        "audio_s": audio_s,
        "wall_s": wall,
        "audio_s_per_s": audio_s / wall,
        "new_tokens": tokens[0],
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def unbatched(engine: Engine) -> Callable[[Call], Any]:
    def work(call: Call) -> list[Any]:
        out = []
        for ask in call.asks:
            assert ask.audio is not None
            # each prompt its own generate (the local engine reuses the last clip's encoding)
            out += engine.generate([Ask(ask.prompt, audio=0, max_new_tokens=ask.max_new_tokens)], audios=[call.audios[ask.audio]])
        return out

    return work


def batched(engine: Engine) -> Callable[[Call], Any]:
    return lambda call: engine.generate(call.asks, audios=call.audios)


def batched_by_policy(engine: Engine, max_tokens: int) -> Callable[[Call], Any]:
    """One engine call per run of the batching policy (earshot.af3.batching): the segment's
    ~15,000-token prompts apart from its ~800-token chunk prompts, as af3_llm cuts them."""
    from earshot.af3.batching import DEFAULT_MAX_BATCH_ROWS, batches

    def length(call: Call, i: int) -> int:
        audio = call.asks[i].audio
        return (len(call.audios[audio]) * 25 // SR if audio is not None else 0) + 40

    def work(call: Call) -> list[Any]:
        out: list[Any] = [None] * len(call.asks)
        for run in batches(list(range(len(call.asks))), DEFAULT_MAX_BATCH_ROWS, max_tokens, lambda i: length(call, i)):
            gens = engine.generate([call.asks[i] for i in run], audios=call.audios)
            for i, g in zip(run, gens, strict=True):
                out[i] = g
        return out

    return work


def llm_stats(url: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    from earshot.triton import protocol as p

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(p.LLM, as_json=True)["model_stats"][0]
    return int(stats.get("execution_count", 0)), int(stats.get("inference_count", 0))


def serve(repo_dir: Path, model_dir: Path, *, dynamic: bool, log: Path, max_tokens: int | None) -> Any:
    from earshot.triton.repository import default_repository, prepare_repository
    from earshot.triton.server import TritonServer, free_port

    params = ({"max_batch_tokens": str(max_tokens)} if max_tokens else {}) if dynamic else {"max_batch_rows": "1"}
    repo = prepare_repository(default_repository(), repo_dir, cpu=True, model_path=str(model_dir), parameters=params)
    if not dynamic:
        for name in ("af_whisper", "af3_llm"):
            cfg = repo / name / "config.pbtxt"
            text = cfg.read_text()
            start = text.index("dynamic_batching {")
            cfg.write_text(text[:start] + text[text.index("}", start) + 1 :])
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), log_path=log,
        extra_args=["--model-control-mode=explicit", "--load-model=af3"],
    )
    server.start(timeout=600)
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="length of the speech file")
    ap.add_argument("--repeat", type=int, default=2, help="the file's segments this many times in the queue")
    ap.add_argument("--concurrency", default="1,4,8", help="Triton with dynamic batching")
    ap.add_argument("--serial-concurrency", default="1,4,8", help="Triton without dynamic batching")
    ap.add_argument(
        "--baseline-calls", type=int, default=0,
        help="segment calls for the in-process runs (one at a time: the rate does not depend on "
        "how many); 0 = all",
    )
    ap.add_argument("--model-path", help="checkpoint (default: a tiny one built here)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in-process (Triton instances use 1)")
    ap.add_argument("--skip-triton", action="store_true")
    ap.add_argument(
        "--max-batch-tokens", type=int, default=None,
        help="padded prompt tokens per batched generate (default: the engine's own, "
        "earshot.af3.batching: 262144 on GPU, 8192 on CPU)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from earshot.engines.local import LocalEngine
    from earshot.engines.triton import TritonEngine

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="earshot-throughput-"))
    if args.model_path:
        model_dir = Path(args.model_path)
    else:
        from earshot.af3.tiny import build_tiny_checkpoint

        model_dir = build_tiny_checkpoint(tmp / "tiny", with_think=False)
    settings = Settings(model_path=str(model_dir), triton_max_concurrency=64)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]

    t0 = time.perf_counter()
    audio = speech_file(args.minutes)
    calls = varied(segment_calls(audio, settings), args.repeat)
    prep_s = time.perf_counter() - t0
    chunks = sum(len(c.audios) - 1 for c in calls) // args.repeat
    print(
        f"job mix: {args.minutes:g} min file -> {len(calls) // args.repeat} segments, {chunks} speech chunks, "
        f"{sum(len(c.asks) for c in calls) // args.repeat} prompts; queue x{args.repeat}; "
        f"prepared in {prep_s:.1f} s (VAD); cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []

    def record(name: str, result: dict[str, Any], **extra: Any) -> None:
        result = {"variant": name, **result, **extra}
        rows.append(result)
        print(
            f"{name:16s} c={result['concurrency']:<2d} {result['wall_s']:8.1f} s  "
            f"{result['audio_s_per_s']:8.1f} audio s/s  tokens={result['new_tokens']:<7d} "
            f"load {result['load_before']:.1f}->{result['load_after']:.1f}"
            + (f"  llm batch {extra['llm_rows_per_execution']:.1f}" if "llm_rows_per_execution" in extra else ""),
            flush=True,
        )

    local = LocalEngine.from_settings(settings)
    baseline = calls[: args.baseline_calls] if args.baseline_calls else calls
    record("local unbatched", run_calls(unbatched(local), baseline, 1))
    record("local batched", run_calls(
        batched_by_policy(local, args.max_batch_tokens or local.runtime.max_batch_tokens), baseline, 1))
    del local

    if not args.skip_triton:
        serial_levels = [int(c) for c in args.serial_concurrency.split(",") if c.strip()]
        for name, dynamic, conc in (("triton serial", False, serial_levels), ("triton dynamic", True, levels)):
            if not conc:
                continue
            server = serve(
                tmp / name.replace(" ", "_"), model_dir, dynamic=dynamic, log=tmp / f"{name}.log",
                max_tokens=args.max_batch_tokens,
            )
            try:
                engine = TritonEngine(settings.model_copy(update={"triton_url": server.grpc_url, "triton_timeout_s": 3600}))
                engine.generate([Ask("Hello.", max_new_tokens=1)])  # warm the LLM stub
                for c in conc:
                    before = llm_stats(server.grpc_url)
                    result = run_calls(batched(engine), calls, c)
                    after = llm_stats(server.grpc_url)
                    executions = max(1, after[0] - before[0])
                    record(name, result, llm_rows_per_execution=(after[1] - before[1]) / executions)
                engine.close()
            finally:
                server.stop()

    def rate(name: str, c: int) -> float | None:
        hit = [r["audio_s_per_s"] for r in rows if r["variant"] == name and r["concurrency"] == c]
        return hit[0] if hit else None

    ratios: dict[str, float] = {}
    base = rate("local unbatched", 1)
    assert base is not None
    for r in rows:
        ratios[f"{r['variant']} c={r['concurrency']} / local unbatched"] = r["audio_s_per_s"] / base
    for c in sorted(set(levels) | {int(x) for x in args.serial_concurrency.split(",") if x.strip()}):
        serial, dyn = rate("triton serial", c), rate("triton dynamic", c)
        if serial and dyn:
            ratios[f"triton dynamic / triton serial at c={c}"] = dyn / serial
    print("\nratios")
    for key, value in ratios.items():
        print(f"  {key:48s} {value:6.2f}x")
    report = {
        "minutes": args.minutes, "repeat": args.repeat, "segments": len(calls), "rows": rows, "ratios": ratios,
        "cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
        "threads": args.threads, "baseline_calls": len(baseline), "max_batch_tokens": args.max_batch_tokens,
    }
    out = args.json or (Path(os.environ["OUT"]) / "throughput.json" if os.environ.get("OUT") else None)
    if out:
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
