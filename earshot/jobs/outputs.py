"""Where a job's scratch files and results go.

Results of a job with its own prefix (API/CLI default: ``<EARSHOT_OUTPUT_URL>/<job id>/``)
are ``<prefix>/<stem>.<ext>``. Jobs that share a prefix (ingest: ``s3://bucket/
earshot-output/``, or an API ``output_prefix``) write each object version to its own place,
``<prefix>/<stem>.versions/<version>.<ext>``, so two versions never overwrite each other;
the "latest" copy ``<prefix>/<stem>.<ext>`` is written only while the job's version is
still the object's current one (checked right before writing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from earshot import storage
from earshot.config import Settings
from earshot.db import models as m

__all__ = ["OutputPlan", "output_plan", "scratch_prefix"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]")


def scratch_prefix(settings: Settings, job_id: str) -> str:
    """Segments of a job live here until it is settled."""
    return storage.join_uri(settings.scratch_url, job_id)


@dataclass(frozen=True)
class OutputPlan:
    base: str  # <prefix>/<stem> of this job's own files (append the extension)
    latest: str | None  # <prefix>/<stem> of the "latest" copies, or None

    def uri(self, ext: str) -> str:
        return self.base + ext

    def latest_uri(self, ext: str) -> str | None:
        return None if self.latest is None else self.latest + ext


def _safe_version(version: str) -> str:
    cleaned = _UNSAFE.sub("_", version)[:200].strip(".")
    return cleaned or "v"


def output_plan(settings: Settings, job: m.Job) -> OutputPlan:
    stem = str(job.options.get("output_stem") or PurePosixPath(storage.parse_uri(job.source_uri).key).stem)
    stem = stem or job.id
    if job.output_prefix is None:
        return OutputPlan(base=storage.join_uri(settings.output_url, job.id, stem), latest=None)
    version = job.audio_file.version if job.audio_file is not None else ""
    latest = storage.join_uri(job.output_prefix, stem)
    if not version:
        return OutputPlan(base=latest, latest=None)
    own = storage.join_uri(job.output_prefix, f"{stem}.versions", _safe_version(version))
    return OutputPlan(base=own, latest=latest)
