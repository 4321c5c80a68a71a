"""Write and read the normalised segments (16 kHz mono) that workers hand to the engine.

FLAC is lossless and about half the size of 16-bit WAV; it stores integers, so float
samples are written as 16-bit PCM, clipped to [-1, 1] here rather than left to whatever the
installed libsndfile does with out-of-range floats.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf  # type: ignore[import-untyped]

from earshot.audio.decode import SAMPLE_RATE

__all__ = ["read_audio", "write_flac", "write_wav"]

PathOrFile = str | Path | BinaryIO


def _pcm16_ready(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {array.shape}")
    return np.clip(array, -1.0, 1.0)


def write_flac(
    samples: np.ndarray, path_or_file: PathOrFile, sample_rate: int = SAMPLE_RATE
) -> None:
    """Write mono float samples as 16-bit FLAC to a path or a binary file object."""
    sf.write(path_or_file, _pcm16_ready(samples), sample_rate, format="FLAC", subtype="PCM_16")


def write_wav(
    samples: np.ndarray,
    path_or_file: PathOrFile,
    sample_rate: int = SAMPLE_RATE,
    *,
    subtype: str = "PCM_16",
) -> None:
    """Write mono float samples as WAV (16-bit PCM by default, ``"FLOAT"`` for float32)."""
    data = _pcm16_ready(samples) if subtype.startswith("PCM") else np.asarray(samples, np.float32)
    sf.write(path_or_file, data, sample_rate, format="WAV", subtype=subtype)


def read_audio(path_or_file: PathOrFile) -> tuple[np.ndarray, int]:
    """Read a FLAC or WAV file as float32 mono (channels averaged) and its sample rate."""
    data, sample_rate = sf.read(path_or_file, dtype="float32", always_2d=True)
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono), int(sample_rate)
