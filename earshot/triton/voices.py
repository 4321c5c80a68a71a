"""Voices for the ``tts`` model: eSpeak NG always; a transformers TTS model when configured.

AF3-Chat's streaming TTS is not released, so the voice is a separate engine. eSpeak NG needs
no weights and is the default everywhere; a neural voice (VITS / MMS-TTS and other models
transformers' text-to-speech pipeline loads) is used when ``neural_voice_path`` names its
weights (local directory or s3:// prefix).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf

from earshot.errors import EngineError
from earshot.speech import MAX_TTS_CHARS, espeak
from earshot.triton import protocol as p
from earshot.triton.backend import ModelArgs


@dataclass(frozen=True)
class Spoken:
    samples: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    voice: str


class Voice(Protocol):
    def speak(self, text: str) -> Spoken: ...


class EspeakVoice:
    """``earshot.speech.espeak``, made safe for the python backend stub.

    The stub's embedded interpreter starts in the C locale, so its filesystem encoding is
    ASCII and a non-ASCII summary cannot be passed as a str argument to espeak-ng. The same
    command with bytes arguments gives the same audio as the local engine.
    """

    def __init__(self, voice: str = "en-us", binary: str = "espeak-ng") -> None:
        self.voice = voice
        self.binary = binary

    def speak(self, text: str) -> Spoken:
        if sys.getfilesystemencoding().lower().replace("-", "") == "utf8":
            wav, voice = self._wav_via_earshot(text)
        else:
            wav, voice = self._wav_bytes_argv(text)
        samples, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=False)
        if samples.ndim > 1:
            samples = samples.mean(axis=1)
        return Spoken(samples=np.ascontiguousarray(samples, dtype=np.float32), sample_rate=int(rate), voice=voice)

    def _wav_via_earshot(self, text: str) -> tuple[bytes, str]:
        speech = espeak(text, voice=self.voice, binary=self.binary)
        return speech.wav, speech.voice

    def _wav_bytes_argv(self, text: str) -> tuple[bytes, str]:
        exe = shutil.which(self.binary)
        if exe is None:
            # Same message and code as the local engine's
            return self._wav_via_earshot(text)
        # The same text normalisation as earshot.speech.espeak, so both engines speak alike.
        text = " ".join(text.split())[:MAX_TTS_CHARS] or "No summary is available."
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "speech.wav"
            proc = subprocess.run(
                [exe.encode(), b"-v", self.voice.encode(), b"-w", bytes(out), b"--", text.encode("utf-8")],
                capture_output=True,
                timeout=300,
                check=False,
            )
            if proc.returncode != 0 or not out.exists():
                raise EngineError(
                    f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}", code="tts_failed"
                )
            return out.read_bytes(), f"espeak-ng:{self.voice}"


class TransformersVoice:
    """Any checkpoint transformers' ``text-to-speech`` pipeline can load without extra inputs."""

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        from transformers import pipeline

        self.name = f"transformers:{model_dir.rstrip('/').rsplit('/', 1)[-1]}"
        self.pipe: Any = pipeline("text-to-speech", model=model_dir, device=device)  # type: ignore[call-overload]

    def speak(self, text: str) -> Spoken:
        text = " ".join(text.split())[:MAX_TTS_CHARS] or "No summary is available."
        out = self.pipe(text)
        samples = np.asarray(out["audio"], dtype=np.float32).reshape(-1)
        peak = float(np.abs(samples).max()) if samples.size else 0.0
        if peak > 1.0:  # some voices are unnormalised; clip-free PCM is the contract
            samples = samples / peak
        return Spoken(samples=samples, sample_rate=int(out["sampling_rate"]), voice=self.name)


def load_voice(args: ModelArgs) -> Voice:
    """The configured voice; empty parameters fall back to the server's EARSHOT_* settings."""
    from earshot.config import Settings

    settings = Settings()
    neural = args.param(p.PARAM_NEURAL_VOICE_PATH)
    if neural:
        from earshot.af3.loading import resolve_model_dir

        return TransformersVoice(str(resolve_model_dir(neural, settings)), device=args.device)
    return EspeakVoice(
        voice=args.param(p.PARAM_ESPEAK_VOICE) or settings.tts_voice,
        binary=args.param(p.PARAM_ESPEAK_BINARY) or settings.espeak_binary,
    )
