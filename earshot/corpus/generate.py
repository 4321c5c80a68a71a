"""Write a split of the corpus: 30 s WAV windows, their ground truth, and AF3 manifests.

Layout under ``out/<split>/``::

    clips/w00000.wav ...
    truth.jsonl       one Scene per window (utterances and events with times, voice, noise)
    train.jsonl       AF3 conversation records (relative sound paths) for the curriculum runner
    think.jsonl       records for the think adapter (an explained answer)

Window i of a split is generated from ``(split seed, i)`` alone, so any window can be rebuilt
without the others and the work can be spread over processes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from earshot.corpus.scenes import SYSTEM_PROMPT, Scene, build_scene, caption, conversation
from earshot.corpus.spec import CorpusSpec, load_spec
from earshot.corpus.voices import SAMPLE_RATE


def _prompts() -> tuple[str, str]:
    from earshot import prompts

    return prompts.CAPTION, prompts.EVENTS


def window_kind(spec: CorpusSpec, rng: np.random.Generator, split: str) -> str:
    shares = spec.splits[split].kinds or spec.scene.kinds
    kinds = list(shares)
    weights = np.array([shares[k] for k in kinds], dtype=np.float64)
    return str(kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))])


def make_window(
    spec: CorpusSpec, split: str, index: int, *, kind: str | None = None
) -> tuple[Scene, np.ndarray]:
    cfg = spec.splits[split]
    rng = np.random.default_rng([cfg.seed, index])
    chosen = kind or window_kind(spec, rng, split)
    return build_scene(
        rng,
        spec,
        scene_id=f"{split}-{index:05d}",
        kind=chosen,
        voices=cfg.voices,
        heldout_sentences=cfg.sentences == "heldout",
    )


def think_answer(scene: Scene) -> str:
    """AF-Think's shape: a short thought, a blank line, then the answer (no tags)."""
    if scene.utterances and scene.events:
        thought = (
            f"I hear a {('woman' if '+f' in (scene.voice or '') else 'man')} speaking and "
            f"{len(scene.events)} other sound{'s' if len(scene.events) > 1 else ''} over the noise."
        )
    elif scene.utterances:
        thought = "I hear one voice speaking in sentences, with pauses between them."
    else:
        thought = (
            f"I hear no speech, only {len(scene.events)} sound event{'s' if len(scene.events) > 1 else ''}."
        )
    return f"{thought}\n\n{caption(scene)}"


@dataclass
class _Job:
    spec_path: str
    split: str
    index: int
    out: str


def _one(job: _Job) -> dict[str, Any]:
    rel = f"clips/w{job.index:05d}.wav"
    sidecar = Path(job.out) / f"clips/w{job.index:05d}.json"
    if sidecar.exists() and (Path(job.out) / rel).exists():
        # Written last, after the audio: a window with its sidecar is complete.
        done: dict[str, Any] = json.loads(sidecar.read_text())
        return done
    spec = load_spec(job.spec_path)
    scene, audio = make_window(spec, job.split, job.index)
    sf.write(Path(job.out) / rel, audio, SAMPLE_RATE, subtype="PCM_16")
    caption_prompt, events_prompt = _prompts()
    rng = np.random.default_rng([spec.splits[job.split].seed, job.index, 1])
    turns = conversation(scene, rng, caption_prompt=caption_prompt, events_prompt=events_prompt)
    from earshot.prompts import THINK_QUESTION

    think = [("system", SYSTEM_PROMPT), ("human", "<sound>" + THINK_QUESTION), ("gpt", think_answer(scene))]
    row = {"scene": scene.to_json(), "record": _record(rel, turns), "think": _record(rel, think)}
    tmp = sidecar.with_suffix(".tmp")
    tmp.write_text(json.dumps(row))
    tmp.replace(sidecar)
    return row


def _record(sound: str, turns: list[tuple[str, str]]) -> dict[str, Any]:
    return {"sound": sound, "conversations": [{"from": who, "value": text} for who, text in turns]}


def generate_split(
    split: str,
    out: str | Path,
    *,
    spec_path: str | Path | None = None,
    windows: int | None = None,
    workers: int | None = None,
) -> Path:
    """Generate ``split`` into ``out/<split>``; returns that directory. Reproducible bit for bit."""
    from earshot.corpus.spec import DEFAULT_SPEC

    spec_file = str(spec_path or DEFAULT_SPEC)
    spec = load_spec(spec_file)
    if split not in spec.splits:
        raise KeyError(f"split {split!r} is not in the spec (it has {', '.join(spec.splits)})")
    n = windows or spec.splits[split].windows
    root = Path(out) / split
    (root / "clips").mkdir(parents=True, exist_ok=True)
    jobs = [_Job(spec_file, split, i, str(root)) for i in range(n)]
    procs = workers if workers is not None else min(2, os.cpu_count() or 1)
    results: Iterator[dict[str, Any]]
    if procs > 1:
        pool = ProcessPoolExecutor(procs)
        results = pool.map(_one, jobs, chunksize=8)
    else:
        pool = None
        results = map(_one, jobs)
    try:
        rows = list(results)
    finally:
        if pool is not None:
            pool.shutdown()
    _write_jsonl(root / "truth.jsonl", [r["scene"] for r in rows])
    _write_jsonl(root / "train.jsonl", [r["record"] for r in rows])
    _write_jsonl(root / "think.jsonl", [r["think"] for r in rows])
    return root


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_truth(split_dir: str | Path) -> list[Scene]:
    lines = (Path(split_dir) / "truth.jsonl").read_text().splitlines()
    return [Scene.from_json(json.loads(line)) for line in lines if line.strip()]
