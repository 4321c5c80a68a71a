"""Probe and decode any audio FFmpeg can read into 16 kHz mono float32, streaming.

PyAV's bundled FFmpeg does the work, so no system ffmpeg is needed. Decoding is a generator
of fixed-length chunks: memory stays bounded by one chunk plus a few codec frames whatever
the length of the input.

Failure codes (``AudioError.code``): ``empty_file``, ``not_audio``, ``corrupt_audio``,
``zero_duration`` and ``too_long``. Each message is written for a person reading a failed
job, not for a developer.

Only audio containers are opened (:data:`ALLOWED_DEMUXERS`), only through FFmpeg's ``file``
protocol: a playlist (HLS ``.m3u8``), a concat list or any other container that names further
inputs would make FFmpeg read files or URLs chosen by whoever uploaded it.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.container
import av.error
import numpy as np

from earshot.errors import AudioError

__all__ = [
    "SAMPLE_RATE",
    "AudioInfo",
    "decode_all",
    "decode_stream",
    "format_duration",
    "probe",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000

# FFmpeg demuxer names (matched against e.g. "matroska,webm" and "mov,mp4,m4a,3gp,3g2,mj2").
# Never: hls, concat, image2, tee, data URIs or anything else that reads further inputs.
ALLOWED_DEMUXERS: tuple[str, ...] = (
    "wav", "w64", "mp3", "flac", "ogg", "matroska", "mov", "aiff", "aac", "asf",
    "amr", "amrnb", "amrwb", "caf", "au", "wv",
)
_OPEN_OPTIONS = {
    "format_whitelist": ",".join(ALLOWED_DEMUXERS),
    "protocol_whitelist": "file",
}

# Bad packets are skipped like the ffmpeg CLI does: one damaged frame in a long recording
# should not lose the whole file. But every skipped packet shifts all later audio earlier,
# and so every later timestamp; beyond a handful (or 1% of packets) the file is treated
# as corrupt rather than silently mistimed.
_TOLERATED_BAD_PACKETS = 8
_TOLERATED_BAD_FRACTION = 0.01


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about the audio, before decoding anything.

    ``duration_s`` is ``None`` when the container does not know it (e.g. some streamed
    WebM); for MP3 without a Xing header it is FFmpeg's estimate from the bitrate.
    """

    duration_s: float | None
    format_name: str
    codec: str
    sample_rate: int
    channels: int
    size_bytes: int


def format_duration(seconds: float) -> str:
    """``3725.4`` -> ``"1:02:05"``, for messages people read."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def probe(path: str | Path, *, max_duration_s: float | None = None) -> AudioInfo:
    """Read the header of ``path`` and describe its best audio stream.

    Raises ``AudioError`` with code ``empty_file``, ``not_audio``, ``corrupt_audio`` (the
    bytes announce an audio format FFmpeg cannot read, e.g. a cut-off MP3) or ``too_long``
    (the stated length exceeds ``max_duration_s``). An empty container is only detected
    by decoding (``zero_duration``): headers of empty files state no length at all. A missing file raises ``FileNotFoundError``: that is a fault of
    whoever handed us the path, not of the upload.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise AudioError("file is empty (0 bytes)", code="empty_file")
    with _open(path) as container:
        stream = _audio_stream(container)
        info = AudioInfo(
            duration_s=_duration_s(container, stream),
            format_name=container.format.name,
            codec=stream.codec_context.name,
            sample_rate=int(stream.codec_context.sample_rate or 0),
            channels=int(stream.codec_context.channels or 0),
            size_bytes=size,
        )
    if max_duration_s is not None and info.duration_s is not None:
        _check_length(info.duration_s, max_duration_s)
    return info


def decode_stream(
    path: str | Path,
    *,
    sample_rate: int = SAMPLE_RATE,
    chunk_s: float = 30.0,
    max_duration_s: float | None = None,
) -> Generator[np.ndarray, None, None]:
    """Yield float32 mono chunks at ``sample_rate`` of ``chunk_s`` seconds each.

    Every chunk but the last has exactly ``round(chunk_s * sample_rate)`` samples, so a
    consumer can count samples to know the time. The audio is downmixed and resampled by
    FFmpeg's libswresample (``aresample``), the same code path as ``ffmpeg -ac 1 -ar``.

    ``max_duration_s`` is checked against the header first (cheap early rejection) and
    again against the decoded length, because headers can lie or be absent.
    """
    if chunk_s <= 0:
        raise ValueError("chunk_s must be positive")
    info = probe(path, max_duration_s=max_duration_s)
    chunk_n = max(1, round(chunk_s * sample_rate))
    limit_n = None if max_duration_s is None else int(max_duration_s * sample_rate)

    pending: list[np.ndarray] = []
    pending_n = 0
    total_n = 0
    for piece in _decoded_pieces(Path(path), sample_rate, info):
        total_n += piece.shape[0]
        if limit_n is not None and total_n > limit_n:
            assert max_duration_s is not None
            _check_length(total_n / sample_rate, max_duration_s)
        pending.append(piece)
        pending_n += piece.shape[0]
        if pending_n >= chunk_n:
            buffer = np.concatenate(pending)
            cut = 0
            while buffer.shape[0] - cut >= chunk_n:
                yield buffer[cut : cut + chunk_n]
                cut += chunk_n
            rest = buffer[cut:].copy()
            pending, pending_n = [rest], rest.shape[0]
    if pending_n:
        yield np.concatenate(pending)


def decode_all(
    path: str | Path,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """The whole file as one float32 mono array. Only for short files."""
    chunks = list(decode_stream(path, sample_rate=sample_rate, max_duration_s=max_duration_s))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


# --------------------------------------------------------------------------- internals


def _open(path: Path) -> av.container.InputContainer:
    try:
        # An absolute path: "concat:a|b" or "http:x" must never be read as a protocol.
        # Tags in legacy encodings must not make a valid recording unreadable.
        container = av.open(
            str(path.absolute()), mode="r", metadata_errors="replace", options=dict(_OPEN_OPTIONS)
        )
    except av.error.FFmpegError as exc:
        kind = _sniff(path)
        if kind is not None:
            # Telling the uploader "this is not audio" about their (cut-off) MP3 would be
            # wrong and confusing; the bytes say which format it was meant to be.
            raise AudioError(
                f"corrupt audio: the file starts like {kind} but ffmpeg could not read it "
                f"({_reason(exc)}); it may be truncated or damaged",
                code="corrupt_audio",
            ) from exc
        raise AudioError(
            f"not an audio file: ffmpeg could not read it ({_reason(exc)})", code="not_audio"
        ) from exc
    names = set(container.format.name.split(","))
    if not names & set(ALLOWED_DEMUXERS):  # the whitelist is FFmpeg's; this is a second lock
        container.close()
        raise AudioError(
            f"not an audio file: {container.format.name} containers are not accepted", code="not_audio"
        )
    return container


def _sniff(path: Path) -> str | None:
    """Name the audio container that the first bytes announce, if any."""
    with path.open("rb") as fh:
        head = fh.read(12)
    if head.startswith(b"ID3"):
        return "an MP3 file (ID3 tag)"
    if head[:4] == b"RIFF" and (len(head) < 12 or head[8:12] == b"WAVE"):
        return "a WAV file"
    if head.startswith(b"fLaC"):
        return "a FLAC file"
    if head.startswith(b"OggS"):
        return "an Ogg file"
    if head.startswith(b"\x1aE\xdf\xa3"):
        return "a Matroska/WebM file"
    if head[4:8] == b"ftyp":
        return "an MP4/M4A file"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "an AIFF file"
    # MPEG audio frame sync (MP3, or AAC in ADTS): 11 set bits.
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "an MPEG audio stream (MP3/AAC)"
    return None


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    stream = container.streams.best("audio")
    if not isinstance(stream, av.AudioStream):
        kinds = sorted({s.type for s in container.streams})
        found = f" (it has only {', '.join(kinds)} streams)" if kinds else ""
        raise AudioError(
            f"not an audio file: ffmpeg found no audio stream{found}", code="not_audio"
        )
    if stream.codec_context is None:
        raise AudioError(
            f"unsupported audio: no decoder for codec {stream.codec.name!r}", code="not_audio"
        )
    return stream


def _duration_s(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _check_length(duration_s: float, max_duration_s: float) -> None:
    if duration_s > max_duration_s:
        raise AudioError(
            f"audio is too long: {format_duration(duration_s)} exceeds the limit of "
            f"{format_duration(max_duration_s)}",
            code="too_long",
        )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.error.FFmpegError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


# Sample formats FFmpeg decoders produce, as numpy dtypes ("p" suffix: planar).
_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(t)
    for name, t in [
        ("u8", np.uint8),
        ("s16", np.int16),
        ("s32", np.int32),
        ("s64", np.int64),
        ("flt", np.float32),
        ("dbl", np.float64),
    ]
}


class _MonoResampler:
    """Downmix and resample to float32 mono with PyAV's ``AudioResampler`` (FFmpeg's swr).

    Two things on top of PyAV's class:

    - Decoded frames are batched to about ``BATCH_S`` before resampling. Codec frames are
      small (1152 samples for MP3) and every ``resample`` call costs ~70 us of filter-graph
      overhead: for 44.1 kHz MP3 that is more than the resampling itself.
    - A mid-stream change of sample rate, channel layout or format (legal in MP3 and AAC)
      flushes the current resampler and starts a new one; PyAV's refuses such frames.
    """

    BATCH_S = 0.5

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None
        self._batch: list[list[np.ndarray]] = []
        self._batch_n = 0

    def push(self, frame: av.AudioFrame) -> list[np.ndarray]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        out: list[np.ndarray] = []
        if key != self._key:
            out.extend(self.flush())
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
            self._key = key
        self._batch.append(_frame_data(frame))
        self._batch_n += frame.samples
        if self._batch_n >= self.BATCH_S * frame.sample_rate:
            out.extend(self._resample_batch())
        return out

    def flush(self) -> list[np.ndarray]:
        if self._resampler is None:
            return []
        out = self._resample_batch()
        out.extend(_mono(f) for f in self._resampler.resample(None))
        self._resampler, self._key = None, None
        return out

    def _resample_batch(self) -> list[np.ndarray]:
        if not self._batch or self._resampler is None or self._key is None:
            return []
        planes = [np.concatenate(plane) for plane in zip(*self._batch, strict=True)]
        data = planes[0][None, :] if len(planes) == 1 else np.stack(planes)
        self._batch, self._batch_n = [], 0
        fmt, layout, rate = self._key
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
        frame.sample_rate = rate
        return [_mono(f) for f in self._resampler.resample(frame)]


def _frame_data(frame: av.AudioFrame) -> list[np.ndarray]:
    """The samples of each plane of a decoded frame, as 1-D views (no copy).

    Cheaper than ``AudioFrame.to_ndarray`` (one ``np.vstack`` per frame, a fifth of the
    decoding time for MP3). The views keep their frame's buffers alive until the batch is
    concatenated.
    """
    dtype = _DTYPES[frame.format.name.rstrip("p")]
    if frame.format.is_planar:
        return [np.frombuffer(memoryview(p), dtype, frame.samples) for p in frame.planes]
    count = frame.samples * frame.layout.nb_channels
    return [np.frombuffer(memoryview(frame.planes[0]), dtype, count)]


def _mono(frame: av.AudioFrame) -> np.ndarray:
    # Packed "flt" mono: a single plane of float32 samples.
    return np.frombuffer(memoryview(frame.planes[0]), np.float32, frame.samples)


def _decoded_pieces(path: Path, sample_rate: int, info: AudioInfo) -> Iterator[np.ndarray]:
    """Yield resampled float32 mono arrays, frame by frame, then raise on empty results."""
    resampler = _MonoResampler(sample_rate)
    produced = 0
    packets_with_data = 0
    bad_packets = 0
    with _open(path) as container:
        stream = _audio_stream(container)
        demuxed = container.demux(stream)
        while True:
            try:
                packet = next(demuxed)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                # A read error that is not end-of-file: the container itself is damaged.
                at = format_duration(produced / sample_rate)
                raise AudioError(
                    f"corrupt audio: reading the file failed at {at} ({_reason(exc)})",
                    code="corrupt_audio",
                ) from exc
            if packet.size:
                packets_with_data += 1
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                bad_packets += 1
                tolerated = max(_TOLERATED_BAD_PACKETS, _TOLERATED_BAD_FRACTION * packets_with_data)
                if bad_packets > tolerated:
                    at = format_duration(produced / sample_rate)
                    raise AudioError(
                        f"corrupt audio: decoding failed at {at} ({_reason(exc)})",
                        code="corrupt_audio",
                    ) from exc
                continue
            for frame in frames:
                if not isinstance(frame, av.AudioFrame) or frame.samples == 0:
                    continue
                for piece in resampler.push(frame):
                    produced += piece.shape[0]
                    yield piece
        for piece in resampler.flush():
            produced += piece.shape[0]
            yield piece

    if bad_packets:
        log.warning("skipped %d undecodable packets in %s", bad_packets, path.name)
    decoded_s = produced / sample_rate
    if (
        produced
        and info.duration_s
        and abs(decoded_s - info.duration_s) > max(1.0, 0.05 * info.duration_s)
    ):
        # Not an error (a truncated upload still has usable audio, and ffmpeg behaves the
        # same), but worth a trace when results look short.
        log.warning(
            "%s: decoded %.1f s but the header says %.1f s (truncated or damaged?)",
            path.name,
            decoded_s,
            info.duration_s,
        )
    if produced == 0:
        if packets_with_data == 0 and bad_packets == 0:
            raise AudioError("the file contains no audio (duration is 0 s)", code="zero_duration")
        raise AudioError(
            f"corrupt audio: no samples could be decoded from the {info.codec} stream",
            code="corrupt_audio",
        )
