"""Sound events made with numpy: siren sweeps, alarm beeps, knocks, noise bursts, chimes,
and background noise. Each event fills exactly the span it is placed at (its label's times)."""

from __future__ import annotations

import numpy as np

from earshot.corpus.voices import SAMPLE_RATE


def _fade(x: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    n = min(len(x) // 2, int(seconds * SAMPLE_RATE))
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def event(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A unit-peak event of ``seconds``."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    if kind == "siren":
        # A two-tone sweep (600-1400 Hz) at 0.5-1.5 sweeps a second.
        lo, hi = rng.uniform(500, 800), rng.uniform(1100, 1600)
        rate = rng.uniform(0.5, 1.5)
        freq = lo + (hi - lo) * (0.5 + 0.5 * np.sin(2 * np.pi * rate * t))
        x = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE)
    elif kind == "alarm":
        # Square-ish beeps, on/off at 3-6 Hz.
        f = rng.uniform(2000, 3500)
        gate = (np.sin(2 * np.pi * rng.uniform(3, 6) * t) > 0).astype(np.float64)
        gate[: int(0.05 * SAMPLE_RATE)] = 1.0
        x = np.sign(np.sin(2 * np.pi * f * t)) * 0.6 * gate
    elif kind == "knock":
        # Damped low thuds every 0.15-0.35 s.
        x = np.zeros(n)
        period = rng.uniform(0.15, 0.35)
        f = rng.uniform(120, 260)
        for start in np.arange(0.0, seconds - 0.05, period):
            i = int(start * SAMPLE_RATE)
            m = min(n - i, int(0.12 * SAMPLE_RATE))
            tt = np.arange(m) / SAMPLE_RATE
            x[i : i + m] += np.sin(2 * np.pi * f * tt) * np.exp(-tt * 40) + 0.3 * rng.standard_normal(
                m
            ) * np.exp(-tt * 80)
        x[-int(0.01 * SAMPLE_RATE) :] *= 0.0
    elif kind == "burst":
        # Band-limited noise with a flat envelope.
        x = np.diff(rng.standard_normal(n + 1)) if rng.random() < 0.5 else rng.standard_normal(n)
        x = x / (np.max(np.abs(x)) + 1e-9)
    elif kind == "chime":
        # A bell-like chord, struck once or twice.
        base = rng.uniform(600, 1200)
        x = np.zeros(n)
        strikes = [0.0] if seconds < 1.6 else [0.0, seconds / 2]
        for s in strikes:
            i = int(s * SAMPLE_RATE)
            tt = np.arange(n - i) / SAMPLE_RATE
            tone = sum(np.sin(2 * np.pi * base * r * tt) / (k + 1) for k, r in enumerate((1.0, 2.76, 5.4)))
            x[i:] += tone * np.exp(-tt * 2.5)
        # Held to its end so the offset is where the label says.
        x = x * np.maximum(0.25, np.linspace(1.0, 0.25, n))
    else:
        raise ValueError(f"unknown event kind {kind!r}")
    x = x / (np.max(np.abs(x)) + 1e-9)
    return _fade(x.astype(np.float32))


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f^2) noise."""
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    else:
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec = spec / (np.sqrt(f) if kind == "pink" else f)
        x = np.fft.irfft(spec, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0
