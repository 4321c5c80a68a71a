"""The whole job judged by the golden model's words and times, on held-out audio made here.

What `earshot eval` measures window by window, measured through `earshot run` (decode, resample,
segment cuts, silero-vad chunks, sentence cues, event merging, the report): files made of
consecutive windows of the corpus's `eval` split (held-out word pairs, seeds training never
used), whose sentence and sound-event times are known to the sample.

    python bench/golden_pipeline.py                       # models/golden, local engine
    python bench/golden_pipeline.py --triton              # the same files on tritonserver (CPU) too
    python bench/golden_pipeline.py --model DIR --long-windows 21

It prints, per file and engine: transcript WER, the share of utterances whose start and end are
within 0.5 s of the sentence they overlap most, event onset/offset MAE and label accuracy; and
the same short file as FLAC, 44.1 kHz stereo MP3, 8 kHz WAV and Opus. Writes JSON to
bench/results/golden_pipeline.json (or --out). The jobs cut segments at 30 s
(EARSHOT_MAX_SEGMENT_S), the window the golden model was trained on; real AF3 takes 600 s.

These are the judging tests issue 17 asks for, as measurements: they become assertions in
tests/golden/ once a golden model reaches the targets (WER <= 10 %, times within 0.5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from earshot.audio import synth
from earshot.corpus.files import FileTruth, compose_file
from earshot.corpus.scenes import Event
from earshot.corpus.spec import load_spec
from earshot.corpus.voices import resample
from earshot.evaluation import pair_events, word_errors

REPO = Path(__file__).resolve().parents[1]
TIME_TOL_S = 0.5
FIRST = 200  # eval windows from here on: `earshot eval` scores the first 48


def judge(report: dict[str, Any], truth: FileTruth) -> dict[str, Any]:
    hypothesis = " ".join(u["text"] for u in report["transcript"])
    errors, words = word_errors(truth.transcript, hypothesis)
    placed = []
    for u in report["transcript"]:
        best = max(truth.utterances, key=lambda t: min(t.end, u["end"]) - max(t.start, u["start"]))
        placed.append(max(abs(best.start - u["start"]), abs(best.end - u["end"])) <= TIME_TOL_S)
    predicted = [Event(e["start"], e["end"], e["label"]) for e in report["events"]]
    pairs = pair_events(truth.events, predicted)
    paired = [(t, p) for t, p in pairs if p is not None]
    return {
        "seconds": round(truth.duration, 1),
        "words": words,
        "wer": round(errors / words, 4) if words else None,
        "utterances": len(placed),
        "utterances_within_0_5_s": round(sum(placed) / len(placed), 4) if placed else None,
        "events": len(pairs),
        "events_paired": len(paired),
        "onset_mae_s": round(float(np.mean([abs(t.start - p.start) for t, p in paired])), 3) if paired else None,
        "offset_mae_s": round(float(np.mean([abs(t.end - p.end) for t, p in paired])), 3) if paired else None,
        "event_label_accuracy": round(sum(1 for t, p in paired if p.label == t.label) / len(pairs), 4) if pairs else None,
    }


def run_job(path: Path, env: dict[str, str], tasks: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "run", "--json", str(path), "--tasks", tasks],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not reports or reports[-1]["status"] != "succeeded":
        raise SystemExit(f"job on {path} failed: {out.stderr[-2000:]}")
    report: dict[str, Any] = reports[-1]
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "models" / "golden"))
    ap.add_argument("--long-windows", type=int, default=21, help="windows in the long file (21 = 630 s)")
    ap.add_argument("--triton", action="store_true", help="also run the files on tritonserver (CPU)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "golden_pipeline.json"))
    args = ap.parse_args()

    spec = load_spec()
    tmp = Path(tempfile.mkdtemp(prefix="earshot-golden-bench-"))
    env = {
        **os.environ,
        "EARSHOT_DATABASE_URL": f"sqlite:///{tmp / 'earshot.db'}",
        "EARSHOT_OUTPUT_URL": (tmp / "out").as_uri(),
        "EARSHOT_SCRATCH_URL": (tmp / "scratch").as_uri(),
        "EARSHOT_MODEL_PATH": args.model,
        "EARSHOT_ENGINE": "local",
        "EARSHOT_MAX_SEGMENT_S": "30",
    }
    env.pop("EARSHOT_BROKER_URL", None)  # in-process tasks; `run` migrates the embedded SQLite itself

    files: dict[str, tuple[Path, FileTruth]] = {}
    audio, truth = compose_file(spec, "eval", windows=args.long_windows, first=FIRST,
                                kinds=["speech", "speech_events", "events"])
    files["long"] = (synth.encode_file(audio, tmp / "long.flac"), truth)
    short, short_truth = compose_file(spec, "eval", windows=2, first=FIRST + 60, kinds=["speech"])
    cd = resample(short, 16000, 44100)
    files["flac"] = (synth.encode_file(short, tmp / "short.flac"), short_truth)
    files["mp3_44k_stereo"] = (synth.encode_file(np.stack([cd, 0.8 * cd], axis=1), tmp / "short.mp3", sample_rate=44100), short_truth)
    files["wav_8k"] = (synth.encode_file(resample(short, 16000, 8000), tmp / "short.wav", sample_rate=8000), short_truth)
    files["opus"] = (synth.encode_file(short, tmp / "short.opus"), short_truth)

    engines = ["local"]
    server = None
    if args.triton:
        from earshot.triton.repository import default_repository, prepare_repository
        from earshot.triton.server import TritonServer, free_port

        repo = prepare_repository(default_repository(), tmp / "model_repo", cpu=True, model_path=args.model)
        server = TritonServer(repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                              log_path=tmp / "tritonserver.log",
                              extra_args=["--model-control-mode=explicit", "--load-model=af3"])
        server.start()
        engines.append("triton")
    rows: list[dict[str, Any]] = []
    try:
        for engine in engines:
            run_env = {**env, "EARSHOT_ENGINE": engine}
            if server is not None:
                run_env["EARSHOT_TRITON_URL"] = server.grpc_url
            for name, (path, file_truth) in files.items():
                if engine == "triton" and name not in ("long", "flac"):
                    continue
                tasks = "transcribe,events" if name == "long" else "transcribe"
                t0 = time.monotonic()
                report = run_job(path, run_env, tasks)
                row = {"file": name, "engine": engine, **judge(report, file_truth),
                       "job_s": round(time.monotonic() - t0, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.kill()
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows}, indent=1) + "\n")
    print(f"\n{'file':16s} {'engine':7s} {'WER':>7s} {'cues<=0.5s':>10s} {'onsetMAE':>9s} {'offsetMAE':>9s} {'labels':>7s}")
    for r in rows:
        def f(v: Any, pct: bool = False) -> str:
            return "-" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.2f}")
        print(f"{r['file']:16s} {r['engine']:7s} {f(r['wer'], True):>7s} {f(r['utterances_within_0_5_s'], True):>10s} "
              f"{f(r['onset_mae_s']):>9s} {f(r['offset_mae_s']):>9s} {f(r['event_label_accuracy'], True):>7s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
