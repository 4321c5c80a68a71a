"""Synthetic audio for tests, benchmarks and the demo.

The generator produces a speech-like signal (a voiced harmonic carrier plus breath noise,
amplitude-modulated at a syllable rate) with *true* digital silence at chosen spans, so a
segmenter's cut points can be checked against known answers. Files are written with PyAV's
own encoders, which keeps tests independent of a system ffmpeg.

Everything streams: a three-hour file is produced chunk by chunk and never held in memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from earshot.audio.decode import SAMPLE_RATE

__all__ = [
    "FORMATS",
    "encode_file",
    "speech_like_chunks",
    "tone_with_silences",
]


@dataclass(frozen=True)
class _Format:
    container: str
    codec: str
    video: bool = False
    options: dict[str, str] = field(default_factory=dict)


# "ogg" and "opus" are both Opus in Ogg: there is no Vorbis encoder in PyAV's FFmpeg.
FORMATS: dict[str, _Format] = {
    "wav": _Format("wav", "pcm_s16le"),
    "flac": _Format("flac", "flac"),
    # LAME's faster search: 2.5x quicker, and the quality of synthetic speech is moot.
    "mp3": _Format("mp3", "libmp3lame", options={"compression_level": "7"}),
    "ogg": _Format("ogg", "libopus"),
    "opus": _Format("ogg", "libopus"),
    "m4a": _Format("ipod", "aac"),
    "webm": _Format("webm", "libopus"),
    "mp4": _Format("mp4", "aac", video=True),
}

_CHUNK_S = 30.0


def speech_like_chunks(
    duration_s: float,
    silences: Sequence[tuple[float, float]] = (),
    sr: int = SAMPLE_RATE,
    *,
    channels: int = 1,
    chunk_s: float = _CHUNK_S,
    seed: int = 0,
    amplitude: float = 0.4,
) -> Iterator[np.ndarray]:
    """Yield float32 chunks of a speech-like signal, exactly zero inside ``silences``.

    Chunks are ``(n,)`` for mono and ``(n, channels)`` otherwise. The carrier phase is
    carried from chunk to chunk, so chunk boundaries leave no seams.
    """
    total = round(duration_s * sr)
    step = max(1, round(chunk_s * sr))
    block = max(1, sr // 100)  # envelope and pitch change every 10 ms: cheap and smooth enough
    rng = np.random.default_rng(seed)
    # A bank of noise reused at random offsets: drawing fresh Gaussian noise for hours of
    # audio would dominate the generation time, and nobody can hear the repetition.
    noise_bank = rng.standard_normal(1 << 16).astype(np.float32)
    spans = [(round(a * sr), round(b * sr)) for a, b in silences]
    phase0 = 0.0
    for start in range(0, total, step):
        n = min(step, total - start)
        n_blocks = -(-n // block)
        t_blocks = (start + block * np.arange(n_blocks, dtype=np.float64)) / sr
        # A slowly drifting pitch (110-190 Hz) with a few harmonics: voiced speech.
        f0 = 150.0 + 40.0 * np.sin(2 * np.pi * 0.13 * t_blocks)
        increments = np.repeat(2 * np.pi * f0 / sr, block)[:n]
        phase = (np.cumsum(increments) + phase0).astype(np.float32)
        phase0 = float(np.fmod(phase0 + increments.sum(), 2 * np.pi))
        s, c = np.sin(phase), np.cos(phase)
        voiced = s * (1.75 + c - s * s)  # sin p + 0.5 sin 2p + 0.25 sin 3p, without 2 sines
        offset = int(rng.integers(0, noise_bank.shape[0]))
        noise = np.resize(np.roll(noise_bank, -offset), n)
        # Syllables at ~4 Hz with a floor, so gaps between syllables are quieter than speech
        # but never as quiet as a real pause: the planner must tell them apart. A slower
        # 0.3 Hz swell varies the loudness of phrases.
        syllables = 0.25 + 0.75 * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t_blocks)) ** 2
        phrases = 0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t_blocks + 1.0) ** 2
        envelope = np.repeat((amplitude / 1.2 * syllables * phrases).astype(np.float32), block)[:n]
        signal = envelope * (0.55 * voiced + 0.25 * noise)
        for a, b in spans:
            lo, hi = max(a, start) - start, min(b, start + n) - start
            if lo < hi:
                signal[lo:hi] = 0.0
        if channels == 1:
            yield signal
        else:
            # Slightly different gains per channel so a downmix is not a trivial copy.
            gains = np.linspace(1.0, 0.8, channels, dtype=np.float32)
            yield np.ascontiguousarray(signal[:, None] * gains[None, :])


def tone_with_silences(
    duration_s: float,
    silences: Sequence[tuple[float, float]] = (),
    sr: int = SAMPLE_RATE,
    *,
    channels: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """The whole of :func:`speech_like_chunks` as one array (for short signals)."""
    chunks = list(speech_like_chunks(duration_s, silences, sr, channels=channels, seed=seed))
    if not chunks:
        shape: tuple[int, ...] = (0,) if channels == 1 else (0, channels)
        return np.zeros(shape, dtype=np.float32)
    return np.concatenate(chunks, axis=0)


def encode_file(
    samples: np.ndarray | Iterable[np.ndarray],
    path: str | Path,
    fmt: str | None = None,
    *,
    sample_rate: int = SAMPLE_RATE,
    bitrate: int | None = None,
) -> Path:
    """Encode float samples (``(n,)`` or ``(n, channels)``) into an audio file.

    ``samples`` may be one array or an iterable of chunks, which is written as it is
    consumed so long files never sit in memory. ``fmt`` is a key of :data:`FORMATS`
    (default: the file suffix). ``mp4`` also gets a tiny video stream, to stand in for
    "the audio track of a video file". The encoder's own rate is ``sample_rate`` when the
    codec supports it (Opus only runs at 48 kHz and below; it is resampled to 48 kHz).
    """
    path = Path(path)
    key = (fmt or path.suffix.lstrip(".")).lower()
    if key not in FORMATS:
        raise ValueError(f"unknown format {key!r}; expected one of {sorted(FORMATS)}")
    spec = FORMATS[key]
    chunks: Iterator[np.ndarray] = (
        iter([samples]) if isinstance(samples, np.ndarray) else iter(samples)
    )
    first = next(chunks, None)
    if first is None:
        first = np.zeros(0, dtype=np.float32)
    channels = 1 if first.ndim == 1 else int(first.shape[1])
    layout = {1: "mono", 2: "stereo"}.get(channels)
    if layout is None:
        raise ValueError(f"only mono and stereo are supported, got {channels} channels")

    with av.open(str(path), mode="w", format=spec.container) as container:
        astream = container.add_stream(spec.codec, rate=_codec_rate(spec.codec, sample_rate))
        assert isinstance(astream, av.AudioStream)
        astream.layout = layout
        if bitrate is not None:
            astream.bit_rate = bitrate
        if spec.options:
            astream.codec_context.options = dict(spec.options)
        video = _TinyVideo(container) if spec.video else None
        # Without this an empty input would leave no file at all: the header is written
        # lazily on the first packet.
        container.start_encoding()
        written = 0
        for chunk in itertools.chain([first], chunks):
            if chunk.shape[0] == 0:
                continue
            planar = np.ascontiguousarray(
                chunk.reshape(chunk.shape[0], channels).T, dtype=np.float32
            )
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=layout)
            frame.sample_rate = sample_rate
            frame.time_base = Fraction(1, sample_rate)
            frame.pts = written
            written += chunk.shape[0]
            container.mux(astream.encode(frame))
            if video is not None:
                video.advance_to(written / sample_rate)
        container.mux(astream.encode(None))
        if video is not None:
            video.finish()
    return path


def _codec_rate(codec: str, sample_rate: int) -> int:
    rates = av.codec.Codec(codec, "w").audio_rates
    if not rates or sample_rate in rates:
        return sample_rate
    higher = [r for r in rates if r >= sample_rate]
    return min(higher) if higher else max(rates)


class _TinyVideo:
    """A 2 fps, 32x32 video stream muxed alongside the audio (like a screen recording)."""

    FPS = 2

    def __init__(self, container: av.container.OutputContainer) -> None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self.container = container
        stream = container.add_stream(codec, rate=self.FPS)
        assert isinstance(stream, av.VideoStream)
        self.stream = stream
        self.stream.width = 32
        self.stream.height = 32
        self.stream.pix_fmt = "yuv420p"
        self.frames = 0

    def advance_to(self, t: float) -> None:
        while self.frames / self.FPS < t:
            shade = (self.frames * 16) % 256
            image = np.full((32, 32, 3), shade, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = self.frames
            frame.time_base = Fraction(1, self.FPS)
            self.frames += 1
            self.container.mux(self.stream.encode(frame))

    def finish(self) -> None:
        self.container.mux(self.stream.encode(None))
