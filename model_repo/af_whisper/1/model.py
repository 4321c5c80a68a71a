"""af_whisper: Earshot's AF3 encoder stage (see earshot.triton.models.AFWhisperModel)."""

from earshot.triton.models import AFWhisperModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
