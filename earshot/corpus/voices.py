"""Speech from espeak-ng at 16 kHz: one sentence per call, so its exact length is known."""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from earshot.errors import ConfigError

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Voice:
    name: str  # espeak-ng voice with variant, e.g. "en-gb-scotland+f3"
    speed_wpm: int
    pitch: int


def resample(audio: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling through the FFT (the clip is padded with silence, so the
    periodic wrap of the FFT does not leak one end into the other)."""
    if rate_in == rate_out:
        return audio.astype(np.float32)
    pad = rate_in // 10
    x = np.concatenate([audio.astype(np.float64), np.zeros(pad)])
    n_out = round(len(x) * rate_out / rate_in)
    spec = np.fft.rfft(x)
    keep = n_out // 2 + 1
    out_spec = np.zeros(keep, dtype=np.complex128)
    m = min(keep, len(spec))
    out_spec[:m] = spec[:m]
    y = np.fft.irfft(out_spec, n_out) * (n_out / len(x))
    return y[: round(len(audio) * rate_out / rate_in)].astype(np.float32)


def speak(text: str, voice: Voice, *, binary: str = "espeak-ng") -> np.ndarray:
    """Mono float32 16 kHz audio of ``text``, trimmed of espeak-ng's own leading/trailing silence."""
    exe = shutil.which(binary)
    if exe is None:
        raise ConfigError(f"the corpus needs {binary!r} (Debian package espeak-ng)", code="missing_tool")
    proc = subprocess.run(
        [exe, "-v", voice.name, "-s", str(voice.speed_wpm), "-p", str(voice.pitch), "--stdout", "--", text],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise ConfigError(f"espeak-ng failed for voice {voice.name}: {proc.stderr.decode(errors='replace')}")
    data, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32", always_2d=False)
    audio = resample(np.asarray(data, dtype=np.float32), int(rate))
    return trim(audio)


def trim(audio: np.ndarray, *, threshold: float = 1e-3) -> np.ndarray:
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0] : loud[-1] + 1]
