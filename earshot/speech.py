"""Text to speech with eSpeak NG: always available offline, no weights needed."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from earshot.errors import EngineError

MAX_TTS_CHARS = 20000


@dataclass(frozen=True)
class Speech:
    wav: bytes
    sample_rate: int
    duration_s: float
    voice: str


def espeak(text: str, *, voice: str = "en-us", binary: str = "espeak-ng") -> Speech:
    """Speak ``text`` to a WAV. A missing binary is a clear, non-retryable error."""
    exe = shutil.which(binary)
    if exe is None:
        raise EngineError(
            f"text-to-speech needs {binary!r} (Debian package espeak-ng), which is not installed",
            code="tts_unavailable",
        )
    text = " ".join(text.split())[:MAX_TTS_CHARS] or "No summary is available."
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        # '--' stops a summary that starts with '-' from being read as an option
        proc = subprocess.run(
            [exe, "-v", voice, "-w", str(out), "--", text],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0 or not out.exists():
            raise EngineError(
                f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}",
                code="tts_failed",
            )
        data = out.read_bytes()
    info = sf.info(io.BytesIO(data))
    return Speech(wav=data, sample_rate=info.samplerate, duration_s=info.duration, voice=f"espeak-ng:{voice}")
