"""af3_llm_stream: the LLM stage, decoupled (see earshot.triton.models.AF3LLMStreamModel)."""

from earshot.triton.models import AF3LLMStreamModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
