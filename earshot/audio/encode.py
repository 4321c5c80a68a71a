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


# Written in blocks so that clipping a 600 s segment needs 256 KiB, not a second copy of it.
_BLOCK = 1 << 16


def _mono_float32(samples: np.ndarray) -> np.ndarray:
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples of shape (n,), got {array.shape}")
    return array


def _write(
    samples: np.ndarray, path_or_file: PathOrFile, sample_rate: int, fmt: str, subtype: str
) -> None:
    array = _mono_float32(samples)
    clip = subtype.startswith("PCM")
    with sf.SoundFile(
        path_or_file, "w", samplerate=sample_rate, channels=1, format=fmt, subtype=subtype
    ) as out:
        for start in range(0, array.shape[0], _BLOCK):
            block = array[start : start + _BLOCK]
            out.write(np.clip(block, -1.0, 1.0) if clip else block)


def write_flac(
    samples: np.ndarray, path_or_file: PathOrFile, sample_rate: int = SAMPLE_RATE
) -> None:
    """Write mono float samples as 16-bit FLAC to a path or a binary file object."""
    _write(samples, path_or_file, sample_rate, "FLAC", "PCM_16")


def write_wav(
    samples: np.ndarray,
    path_or_file: PathOrFile,
    sample_rate: int = SAMPLE_RATE,
    *,
    subtype: str = "PCM_16",
) -> None:
    """Write mono float samples as WAV (16-bit PCM by default, ``"FLOAT"`` for float32)."""
    _write(samples, path_or_file, sample_rate, "WAV", subtype)


def read_audio(path_or_file: PathOrFile) -> tuple[np.ndarray, int]:
    """Read a FLAC or WAV file as float32 mono (channels averaged) and its sample rate."""
    data, sample_rate = sf.read(path_or_file, dtype="float32", always_2d=True)
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono), int(sample_rate)
