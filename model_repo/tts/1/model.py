"""tts: text -> waveform (see earshot.triton.models.TTSModel)."""

from earshot.triton.models import TTSModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
