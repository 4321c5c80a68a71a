"""af3_llm: Earshot's AF3 LLM stage (see earshot.triton.models.AF3LLMModel)."""

from earshot.triton.models import AF3LLMModel as TritonPythonModel

__all__ = ["TritonPythonModel"]
