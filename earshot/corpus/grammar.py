"""Sentences from the spec's templates, with held-out word combinations kept out of training.

A sentence is held out when any pair of its slot words (for the class pairs the spec names)
hashes into the held-out fraction. The hash is a pure function of the two words, so training
and evaluation agree on the split without sharing any state.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np

from earshot.corpus.spec import CorpusSpec

_SLOT = re.compile(r"\{([a-z]+?)(2?)\}")
PROPER_CLASSES = {"name", "city", "day"}


@dataclass(frozen=True)
class Sentence:
    text: str
    slots: dict[str, str] = field(default_factory=dict)  # "name", "name2", "number", ...

    @property
    def number(self) -> str | None:
        return self.slots.get("number")


def _pair_hash(a: str, b: str) -> float:
    digest = hashlib.sha256(f"{a}|{b}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_heldout(spec: CorpusSpec, slots: dict[str, str]) -> bool:
    by_class: dict[str, list[str]] = {}
    for key, word in slots.items():
        by_class.setdefault(key.rstrip("2"), []).append(word)
    for ca, cb in spec.heldout_pairs.classes:
        for a in by_class.get(ca, []):
            for b in by_class.get(cb, []):
                if _pair_hash(a, b) < spec.heldout_pairs.fraction:
                    return True
    return False


def _time(rng: np.random.Generator, spec: CorpusSpec) -> str:
    hour = str(rng.choice(spec.words["hour"]))
    if rng.random() < 0.3:
        return f"{hour} o'clock"
    return f"{hour} {rng.choice(spec.words['minute'])}"


def _fill(m: re.Match[str], rng: np.random.Generator, spec: CorpusSpec, slots: dict[str, str]) -> str:
    cls, second = m.group(1), m.group(2)
    if cls == "time":
        slots["time"] = _time(rng, spec)
        return slots["time"]
    choices = [w for w in spec.words[cls] if not second or w != slots.get(cls)]
    word = str(rng.choice(choices))
    slots[cls + second] = word
    return word.capitalize() if cls in PROPER_CLASSES else word


def sample_sentence(rng: np.random.Generator, spec: CorpusSpec, *, heldout: bool) -> Sentence:
    """One sentence from a random template; ``heldout`` picks which side of the pair split."""
    for _ in range(1000):
        template = str(rng.choice(spec.templates))
        slots: dict[str, str] = {}
        text = _SLOT.sub(lambda m, slots=slots: _fill(m, rng, spec, slots), template)  # type: ignore[misc]
        if is_heldout(spec, slots) == heldout:
            return Sentence(text=text, slots=slots)
    raise RuntimeError("the grammar cannot make a sentence on this side of the held-out split")


def display(sentence: str) -> str:
    """The written form the model answers with: a capital letter and a full stop."""
    return sentence[:1].upper() + sentence[1:] + "."


_WORD = re.compile(r"[a-z0-9']+")


def normalize_words(text: str) -> list[str]:
    """Lower-case words without punctuation: what WER is computed on."""
    return _WORD.findall(text.lower())
