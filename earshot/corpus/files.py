"""Whole files from consecutive corpus windows: a demo sample, a file longer than one segment.

Windows follow each other on the file's timeline (a window ends where its audio ends: speech
windows can be shorter than window_s), so every sentence and sound event keeps a known time. The windows are the same ones ``generate_split`` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from earshot.corpus.generate import make_window
from earshot.corpus.scenes import Event, Utterance
from earshot.corpus.spec import CorpusSpec
from earshot.corpus.voices import SAMPLE_RATE


@dataclass
class FileTruth:
    duration: float
    utterances: list[Utterance] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    voices: list[str] = field(default_factory=list)

    @property
    def transcript(self) -> str:
        return " ".join(u.text for u in self.utterances)

    def to_json(self) -> dict[str, Any]:
        return {
            "duration": self.duration,
            "utterances": [vars(u) for u in self.utterances],
            "events": [vars(e) for e in self.events],
            "voices": self.voices,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileTruth:
        return cls(
            duration=float(data["duration"]),
            utterances=[Utterance(**u) for u in data["utterances"]],
            events=[Event(**e) for e in data["events"]],
            voices=list(data.get("voices", [])),
        )


def compose_file(
    spec: CorpusSpec, split: str, *, windows: int, first: int = 0, kinds: list[str] | None = None
) -> tuple[np.ndarray, FileTruth]:
    """``windows`` consecutive windows of ``split`` (from index ``first``) as one 16 kHz file.

    ``kinds`` forces the kind of each window in turn (cycled), e.g. ["speech", "speech_events"].
    """
    pieces: list[np.ndarray] = []
    truth = FileTruth(duration=0.0)
    offset = 0.0
    for k in range(windows):
        index = first + k
        kind = kinds[k % len(kinds)] if kinds else None
        scene, audio = make_window(spec, split, index, kind=kind)
        pieces.append(audio)
        truth.utterances += [
            Utterance(
                start=round(u.start + offset, 2), end=round(u.end + offset, 2), text=u.text, number=u.number
            )
            for u in scene.utterances
        ]
        truth.events += [
            Event(start=round(e.start + offset, 2), end=round(e.end + offset, 2), label=e.label)
            for e in scene.events
        ]
        if scene.voice:
            truth.voices.append(scene.voice)
        offset += len(audio) / SAMPLE_RATE
    audio_all = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    truth.duration = len(audio_all) / 16000
    return audio_all, truth
