"""Curriculum fine-tuning of AF3: data, stages, the runner, checkpoints and the export.

Modules that the GPU benchmark imports (``step``, ``parts``) depend on torch and transformers
alone, so the benchmark runs on a machine that has neither pydantic nor the database stack.
"""
