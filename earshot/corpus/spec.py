"""The corpus spec: vocabulary, grammar, voices, noise, event kinds and splits, validated."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "examples" / "golden" / "spec.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HeldoutPairs(_Strict):
    classes: list[tuple[str, str]]
    fraction: float = Field(ge=0, lt=1)


class Voices(_Strict):
    seen: list[str] = Field(min_length=1)
    heldout: list[str] = Field(min_length=1)
    speed_wpm: tuple[int, int]
    pitch: tuple[int, int]


class Noise(_Strict):
    kinds: list[Literal["white", "pink", "brown"]]
    snr_db: tuple[float, float]
    clean_fraction: float = Field(ge=0, le=1)


class EventKind(_Strict):
    kind: Literal["siren", "alarm", "knock", "burst", "chime"]
    label: str
    seconds: tuple[float, float]


class Scene(_Strict):
    window_s: float = Field(gt=0, le=30)
    speech_s: tuple[float, float]
    short_speech_fraction: float = Field(default=0.0, ge=0, le=1)
    short_speech_s: tuple[float, float] = (3.0, 18.0)
    pause_s: tuple[float, float]
    lead_s: tuple[float, float]
    events_per_clip: tuple[int, int]
    event_gain_db: tuple[float, float]
    kinds: dict[Literal["speech", "speech_events", "events"], float]


class Split(_Strict):
    seed: int
    windows: int = Field(ge=1)
    voices: Literal["seen", "heldout"]
    sentences: Literal["train", "heldout"]


class ModelSpec(_Strict):
    hidden: int = Field(default=128, ge=16)
    layers: int = Field(default=2, ge=1)
    heads: int = Field(default=4, ge=1)
    encoder_hidden: int | None = None
    encoder_layers: int | None = None
    vocab_size: int = Field(default=1500, ge=300)
    seed: int = 0


class CorpusSpec(_Strict):
    version: int
    words: dict[str, list[str]]
    templates: list[str] = Field(min_length=1)
    heldout_pairs: HeldoutPairs
    voices: Voices
    noise: Noise
    events: list[EventKind] = Field(min_length=1)
    scene: Scene
    splits: dict[str, Split]
    model: ModelSpec = ModelSpec()

    def vocabulary(self) -> set[str]:
        """Every word a sentence can hold (template words included)."""
        out: set[str] = set()
        for words in self.words.values():
            for w in words:
                out.update(w.split())
        for t in self.templates:
            out.update(p for p in t.split() if not p.startswith("{"))
        out.update(["o'clock"])
        return out

    def event_labels(self) -> list[str]:
        return [e.label for e in self.events]


def load_spec(path: str | Path | None = None) -> CorpusSpec:
    raw = yaml.safe_load(Path(path or DEFAULT_SPEC).read_text())
    return CorpusSpec.model_validate(raw)
