"""The corpus spec: vocabulary, grammar, voices, noise, event kinds and splits, validated."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "examples" / "golden" / "spec.yaml"


# "words": single words said apart, the easiest speech; a from-scratch model first learns there
# that the audio tells which word was said, before it must follow 20 s of sentences
WindowKind = Literal["speech", "speech_events", "events", "words"]


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
    kinds: dict[WindowKind, float]
    # a "words" window: this many single words, each said on its own with pauses between
    words_per_clip: tuple[int, int] = (1, 3)
    # end "speech" and "words" windows a lead's length after their last word instead of at
    # window_s: AF3 gets one audio token per 40 ms of the clip it is given, and inference gives
    # it speech chunks, not 30 s of mostly silence (windows with events stay window_s long)
    trim_speech: bool = False


class Split(_Strict):
    seed: int
    windows: int = Field(ge=1)
    voices: Literal["seen", "heldout"]
    sentences: Literal["train", "heldout"]
    # window kinds of this split, instead of the scene's (e.g. a split of single words only)
    kinds: dict[WindowKind, float] | None = None


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
