#!/usr/bin/env python
"""Segments per second and latency through Triton, next to the local engine in the same run.

Each "segment" is one Engine.generate call: a 30 s clip with the per-segment task prompts
(encoded once, answered once per prompt), which is what the pipeline sends per segment.
Both engines run the same checkpoint; the ratio shows what the Triton hop costs (or gains
once the server batches on a GPU).

    python bench/triton_engine.py                      # tiny checkpoint, CPU server started here
    python bench/triton_engine.py --url host:8001 --model-path /models/af3   # existing server

Prints a table; writes JSON to --json or $OUT/triton_engine.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from earshot import prompts as task_prompts
from earshot.audio.synth import tone_with_silences
from earshot.config import Settings
from earshot.engines.base import Ask, Engine


def measure(engine: Engine, clips: Sequence[np.ndarray], prompts: list[str], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []

    def one(clip: np.ndarray) -> list[str]:
        t0 = time.perf_counter()
        out = [g.text for g in engine.generate([Ask(q, audio=0) for q in prompts], audios=[clip])]
        latencies.append(time.perf_counter() - t0)
        return out

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, clips))
    wall = time.perf_counter() - t0
    return {
        "concurrency": concurrency,
        "segments": len(clips),
        "wall_s": wall,
        "segments_per_s": len(clips) / wall,
        "p50_s": float(np.percentile(latencies, 50)),
        "p99_s": float(np.percentile(latencies, 99)),
        "mean_s": statistics.fmean(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Triton gRPC host:port (default: start a CPU server here)")
    parser.add_argument("--model-path", help="AF3 checkpoint (default: build the tiny one)")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--segments", type=int, default=8, help="segments per concurrency level (at least 2x it)")
    parser.add_argument("--segment-s", type=float, default=30.0)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--tasks", default="transcribe,caption,events,summarize")
    parser.add_argument("--skip-local", action="store_true", help="Triton only (e.g. a GPU server elsewhere)")
    parser.add_argument("--json", type=Path, help="write results here (default: $OUT/triton_engine.json)")
    args = parser.parse_args(argv)

    from earshot.engines.local import LocalEngine
    from earshot.engines.triton import TritonEngine

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    prompts = [task_prompts.PROMPTS[t] for t in args.tasks.split(",") if t.strip()]
    tmp = tempfile.TemporaryDirectory(prefix="earshot-bench-")
    server = None
    try:
        model_path = args.model_path
        if model_path is None:
            from earshot.af3.tiny import build_tiny_checkpoint

            model_path = str(build_tiny_checkpoint(Path(tmp.name) / "tiny"))
        url = args.url
        if url is None:
            from earshot.triton.repository import default_repository, prepare_repository
            from earshot.triton.server import TritonServer, free_port

            repo = prepare_repository(default_repository(), Path(tmp.name) / "repo", cpu=True, model_path=model_path)
            server = TritonServer(
                repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                log_path=Path(tmp.name) / "tritonserver.log",
                extra_args=["--model-control-mode=explicit", "--load-model=af3"],
            )
            t0 = time.perf_counter()
            server.start(timeout=600)
            print(f"CPU tritonserver ready in {time.perf_counter() - t0:.0f} s at {server.grpc_url}", flush=True)
            url = server.grpc_url
        settings = Settings(
            model_path=model_path, max_new_tokens=args.max_new_tokens, triton_url=url,
            triton_max_concurrency=max(levels), triton_timeout_s=600,
        )
        engines: dict[str, Engine] = {"triton": TritonEngine.from_settings(settings)}
        if not args.skip_local:
            engines["local"] = LocalEngine.from_settings(settings)

        results: dict[str, list[dict[str, Any]]] = {}
        outputs: dict[str, list[str]] = {}
        for name, engine in engines.items():
            warm = tone_with_silences(args.segment_s, seed=99)
            warmed = engine.generate([Ask(q, audio=0) for q in prompts], audios=[warm])  # loads, warms caches
            outputs[name] = [g.text for g in warmed]
            results[name] = []
            for level in levels:
                n = max(args.segments, 2 * level)
                clips = [tone_with_silences(args.segment_s, [(5.0, 6.0)], seed=i) for i in range(n)]
                row = measure(engine, clips, prompts, level)
                results[name].append(row)
                print(f"{name:6s} c={level}: {row['segments_per_s']:.2f} seg/s, "
                      f"p50 {row['p50_s']:.2f} s, p99 {row['p99_s']:.2f} s", flush=True)

        print()
        print(f"{args.segment_s:.0f} s segments, {len(prompts)} prompts each, {args.max_new_tokens} new tokens, "
              f"model {model_path}")
        print(f"{'conc':>4} {'triton seg/s':>12} {'p50':>7} {'p99':>7} {'local seg/s':>11} {'p50':>7} {'p99':>7} "
              f"{'ratio':>6}")
        for i, level in enumerate(levels):
            t = results["triton"][i]
            loc = results.get("local", [{}] * len(levels))[i]
            ratio = t["segments_per_s"] / loc["segments_per_s"] if loc else float("nan")
            print(f"{level:>4} {t['segments_per_s']:>12.2f} {t['p50_s']:>7.2f} {t['p99_s']:>7.2f} "
                  f"{loc.get('segments_per_s', float('nan')):>11.2f} {loc.get('p50_s', float('nan')):>7.2f} "
                  f"{loc.get('p99_s', float('nan')):>7.2f} {ratio:>6.2f}")
        same = "local" not in outputs or outputs["local"] == outputs["triton"]
        print(f"identical text from both engines on the warm-up segment: {'yes' if same else 'NO'}")

        report = {
            "segment_s": args.segment_s, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
            "model_path": model_path, "url": url, "results": results, "identical_text": same,
            "cpu_count": os.cpu_count(),
        }
        out = args.json or (Path(os.environ["OUT"]) / "triton_engine.json" if os.environ.get("OUT") else None)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2))
            print(f"wrote {out}")
    finally:
        if server is not None:
            server.kill()
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
