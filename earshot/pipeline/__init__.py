"""The job's three steps, each idempotent: prepare (split), analyze (per segment), finalize."""

from earshot.pipeline.analyze import analyze_segment
from earshot.pipeline.finalize import finalize_job
from earshot.pipeline.prepare import prepare_job

__all__ = ["analyze_segment", "finalize_job", "prepare_job"]
