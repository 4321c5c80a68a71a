"""Audio in: probe and decode anything FFmpeg reads to 16 kHz mono, plan segments, write FLAC.

``earshot.audio.synth`` (synthetic test signals and files) is not re-exported: production
code has no use for it.
"""

from earshot.audio.decode import (
    SAMPLE_RATE,
    AudioInfo,
    decode_all,
    decode_stream,
    format_duration,
    probe,
)
from earshot.audio.encode import read_audio, write_flac, write_wav
from earshot.audio.plan import (
    Segment,
    SegmentPlan,
    choose_cut,
    clamp_relative,
    frame_rms,
    segment_stream,
    to_absolute,
)

__all__ = [
    "SAMPLE_RATE",
    "AudioInfo",
    "Segment",
    "SegmentPlan",
    "choose_cut",
    "clamp_relative",
    "decode_all",
    "decode_stream",
    "format_duration",
    "frame_rms",
    "probe",
    "read_audio",
    "segment_stream",
    "to_absolute",
    "write_flac",
    "write_wav",
]
