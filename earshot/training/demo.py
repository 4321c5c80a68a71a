"""A tiny model, a generated dataset and the whole five-stage curriculum, on CPU in minutes.

Tests and the benchmark build their data with the same functions, so what the demo shows is
what the tests check. The model is random: losses fall because it memorises a handful of
examples, not because it learns to listen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from earshot.af3.runtime import SAMPLE_RATE
from earshot.config import Settings

CAPTIONS = [
    "A low steady hum at one hundred and ten hertz.",
    "A bright whistle rises slowly.",
    "Two short beeps, then silence.",
    "A pulsing tone, like an alarm.",
    "Soft noise, like wind or rain.",
    "A chord of three notes fades out.",
    "A quick chirp repeats four times.",
    "A deep buzz with a sharp click at the end.",
]
QUESTIONS = ["Describe the audio.", "What do you hear?", "Summarize the recording."]


def tone_clip(index: int, seconds: float, *, seed: int = 0) -> np.ndarray:
    """A distinct synthetic sound per index: a few sines, an envelope and a little noise."""
    rng = np.random.default_rng(seed * 1000 + index)
    t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float64) / SAMPLE_RATE
    base = 110.0 * (1.5 ** (index % 8))
    signal = np.sin(2 * np.pi * base * t) + 0.5 * np.sin(2 * np.pi * base * 1.5 * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (0.5 + index % 3) * t)
    audio = 0.3 * signal * envelope + 0.02 * rng.standard_normal(t.shape)
    return audio.astype(np.float32)


def write_clip(path: Path, audio: np.ndarray) -> Path:
    from earshot.audio.synth import encode_file

    path.parent.mkdir(parents=True, exist_ok=True)
    return encode_file(audio, path)


def record(sound: str | list[str] | None, turns: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "conversations": [{"from": who, "value": text} for who, text in turns],
    }
    if sound is not None:
        out["sound"] = sound
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@dataclass
class DemoData:
    root: Path
    captions: Path  # single-turn captions, one 30 s window or less
    long: Path  # clips over 30 s (two windows)
    think: Path  # answers with a reasoning trace, for the think LoRA
    chat: Path  # multi-turn (JSON list form)
    broken: Path  # one record of each kind of problem


def make_dataset(
    root: str | Path, *, n: int = 8, seconds: float = 2.0, long_seconds: float = 35.0, seed: int = 0
) -> DemoData:
    """Generate clips and AF3-format manifests (relative sound paths) under ``root``."""
    base = Path(root)
    clips = []
    for i in range(n):
        clips.append(write_clip(base / "clips" / f"clip_{i:02d}.wav", tone_clip(i, seconds, seed=seed)))
    longs = [
        write_clip(base / "clips" / f"long_{i:02d}.wav", tone_clip(i + 3, long_seconds, seed=seed))
        for i in range(2)
    ]
    rel = [f"clips/{c.name}" for c in clips]
    captions = write_jsonl(
        base / "captions.jsonl",
        [
            record(rel[i], [("human", f"<sound>\n{QUESTIONS[i % 3]}"), ("gpt", CAPTIONS[i % 8])])
            for i in range(n)
        ],
    )
    long = write_jsonl(
        base / "long.jsonl",
        [
            record(
                f"clips/{c.name}",
                [("human", "<sound>\nDescribe the audio."), ("gpt", "A long tone that keeps pulsing.")],
            )
            for c in longs
        ],
    )
    think = write_jsonl(
        base / "think.jsonl",
        [
            record(
                rel[i],
                [
                    ("human", "<sound>\nIs this an alarm?"),
                    (
                        "gpt",
                        f"<think>The sound is: {CAPTIONS[i % 8].lower()} Alarms pulse.</think> "
                        + ("Yes." if i % 2 else "No."),
                    ),
                ],
            )
            for i in range(n)
        ],
    )
    chat_records = [
        record(
            rel[i],
            [
                ("human", "<sound>\nWhat do you hear?"),
                ("gpt", CAPTIONS[i % 8]),
                ("human", "Is it loud?"),
                ("gpt", "It is quiet." if i % 2 else "It is fairly loud."),
            ],
        )
        for i in range(n)
    ]
    chat = base / "chat.json"
    chat.write_text(json.dumps(chat_records, indent=1))
    corrupt = base / "clips" / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    broken = write_jsonl(
        base / "broken.jsonl",
        [
            record(rel[0], [("human", "<sound>\nDescribe the audio."), ("gpt", CAPTIONS[0])]),
            record("clips/does_not_exist.wav", [("human", "<sound>\nHi"), ("gpt", "Nothing.")]),
            record("clips/corrupt.wav", [("human", "<sound>\nHi"), ("gpt", "Noise.")]),
            record(f"clips/{longs[0].name}", [("human", "<sound>\nHi"), ("gpt", "Too long for one window.")]),
            {"sound": rel[1], "conversations": [{"from": "human", "value": "<sound> no answer"}]},
            record(rel[1], [("human", "<sound>\nDescribe the audio."), ("gpt", CAPTIONS[1])]),
        ],
    )
    # A line that is not JSON at all.
    with broken.open("a") as fh:
        fh.write("{not json\n")
    return DemoData(root=base, captions=captions, long=long, think=think, chat=chat, broken=broken)


def demo_curriculum(
    data: DemoData, *, model: Path, output: Path, steps: int = 12, batch_size: int = 8
) -> dict[str, Any]:
    """Five stages with AF3's layout and learning rates scaled up for a random tiny model."""
    common = {
        "max_steps": steps,
        "batch_size": batch_size,
        "gradient_accumulation": 1,
        "precision": "auto",
        # Cosine and a batch of every caption at once: first and last loss are comparable.
        "lr_schedule": "cosine",
        "save_every_steps": max(1, steps // 2),
        "log_every_steps": max(1, steps // 4),
        "max_grad_norm": 1.0,
    }
    return {
        "run": "demo",
        "base_model": str(model),
        "checkpoint_root": str(output),
        "cache_dir": str(output / ".cache"),
        "defaults": common,
        "stages": [
            {
                "name": "stage1",
                "description": "projector alignment",
                "learning_rate": 5e-2,
                "datasets": [
                    {"uri": str(data.captions), "weight": 1.0},
                    {"uri": str(data.broken), "weight": 0.5},
                ],
            },
            {
                "name": "stage2",
                "description": "encoder + projector",
                "learning_rate": 1e-2,
                "datasets": [{"uri": str(data.captions)}],
            },
            {
                "name": "stage3",
                "description": "everything, up to 5 windows",
                "learning_rate": 3e-3,
                "datasets": [{"uri": str(data.captions)}, {"uri": str(data.long), "weight": 1.0}],
            },
            {
                "name": "stage3_5",
                "description": "think LoRA",
                "learning_rate": 1e-2,
                "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
                "datasets": [{"uri": str(data.think)}],
            },
            {
                "name": "stage4",
                "description": "everything, multi-turn chat",
                "learning_rate": 2e-3,
                "datasets": [{"uri": str(data.chat)}, {"uri": str(data.captions), "weight": 0.5}],
            },
        ],
    }


def write_curriculum(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_demo(root: Path, *, settings: Settings, steps: int = 12, echo: Any = print) -> dict[str, Any]:
    """Build everything under ``root``, train the five stages, load and run the export."""
    from earshot.af3.runtime import AF3Runtime, audio_features
    from earshot.af3.tiny import build_tiny_checkpoint
    from earshot.db.migrate import upgrade
    from earshot.training.config import load_curriculum
    from earshot.training.trainer import run_curriculum

    root = Path(root).resolve()
    model = root / "tiny-af3"
    if not (model / "config.json").exists():
        echo(f"building a tiny random AF3 in {model}")
        build_tiny_checkpoint(model)
    echo(f"generating clips and manifests in {root / 'data'}")
    data = make_dataset(root / "data")
    config = write_curriculum(
        root / "curriculum.yaml", demo_curriculum(data, model=model, output=root / "runs", steps=steps)
    )
    db_url = f"sqlite:///{root / 'training.db'}"
    upgrade("heads", url=db_url)
    cur = load_curriculum(config)
    echo(f"curriculum {config}: {', '.join(s.name for s in cur.stages)}; {steps} steps each")
    results = run_curriculum(cur, restart=True, database_url=db_url, settings=settings)
    lines: list[str] = []
    for r in results:
        lines.append(
            f"{r.stage}: first loss {r.first_loss:.4f}, last loss {r.last_loss:.4f}"
            + (
                f", skipped {r.skipped['total']} broken records {r.skipped['reasons']}"
                if r.skipped.get("total")
                else ""
            )
        )
    lines.append(
        "(stages 1, 2 and 3.5 only adapt the audio path or a small adapter around a random, frozen "
        "LLM, so their loss can only fall a little; stages 3 and 4 train the LLM itself)"
    )
    export = results[-1].model_uri
    if export:
        from earshot import storage

        path = storage.parse_uri(export).path
        runtime = AF3Runtime.load(path, device="cpu")
        feats, mask = audio_features(runtime.processor.feature_extractor, tone_clip(0, 2.0))
        embeds = runtime.encode_features(feats, mask)
        think_embeds = runtime.encode_features(feats, mask, think=True)
        from earshot.af3.chat import single_turn

        tok = runtime.tokenizer
        plain = runtime.generate(single_turn(tok, "Describe the audio."), [embeds], max_new_tokens=16)
        think = runtime.generate(
            single_turn(tok, "Is this an alarm?", think=True), [think_embeds], max_new_tokens=16, think=True
        )
        lines.append(f"export {path} loads (think adapter: {runtime.think_loaded})")
        lines.append(f"  caption: {plain.text!r}")
        lines.append(f"  think:   {think.text!r}")
        lines.append("  (a random tiny model: the words are noise, the plumbing is real)")
    lines.append(f"status: earshot train status --database-url {db_url}")
    return {"results": results, "lines": lines, "config": config, "database_url": db_url}
