"""What `earshot train status` reports: database rows, and the markers a stage leaves in storage
(which are there even when the database was unreachable during training)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from earshot import storage
from earshot.config import Settings
from earshot.training import checkpoint as ckpt
from earshot.training.config import STAGE_ORDER

_STAGE_FIELDS = (
    "stage",
    "status",
    "step",
    "total_steps",
    "first_loss",
    "last_loss",
    "tokens_per_s",
    "samples_per_s",
    "records_total",
    "records_skipped",
    "skipped_reasons",
    "attempts",
    "resumed_from_step",
    "model_uri",
    "checkpoint_uri",
    "output_uri",
    "started_at",
    "finished_at",
    "error",
)


def storage_state(output: str, *, settings: Settings) -> dict[str, Any] | None:
    """done / in progress (with the latest checkpoint step) / None for one stage output."""
    done = ckpt.read_json(storage.join_uri(output, ckpt.DONE), settings=settings)
    if done is not None:
        metrics = done.get("metrics") or {}
        return {
            "output": output,
            "state": "done",
            "step": metrics.get("steps"),
            "model_uri": done.get("model_uri"),
        }
    latest = ckpt.read_json(storage.join_uri(output, "checkpoints", ckpt.LATEST), settings=settings)
    if latest is not None:
        return {"output": output, "state": "in progress", "step": latest.get("step")}
    return None


def collect_status(
    *, database_url: str | None, output: str | None, settings: Settings, limit: int = 10
) -> dict[str, Any]:
    """Runs from the database at ``database_url`` (None: none) and the markers under ``output``."""
    from earshot.training.records import list_runs

    report: dict[str, Any] = {"runs": [], "storage": [], "database_error": None}
    run_key: str | None = None
    if output:
        uri = storage.parse_uri(output).uri.rstrip("/")
        own = storage_state(uri, settings=settings)
        if own is not None:
            report["storage"].append(own)
            run_key = uri.rsplit("/", 1)[0]
        else:
            run_key = uri
            for name in STAGE_ORDER:
                state = storage_state(storage.join_uri(uri, name), settings=settings)
                if state is not None:
                    report["storage"].append(state)
    views = []
    try:
        if database_url is not None:
            views = list_runs(url=database_url, limit=limit, output_uri=run_key)
    except SQLAlchemyError as exc:
        report["database_error"] = str(exc).splitlines()[0]
    for view in views:
        report["runs"].append(
            {
                "id": view.run.id,
                "name": view.run.name,
                "status": view.run.status,
                "output_uri": view.run.output_uri,
                "current_stage": view.run.current_stage,
                "created_at": view.run.created_at,
                "finished_at": view.run.finished_at,
                "stages": [{f: getattr(s, f) for f in _STAGE_FIELDS} for s in view.stages],
            }
        )
    return report
