"""Run and stage rows in the database. Rank 0 writes; nothing here may stop training.

The service functions raise like any query; ``Recorder`` wraps them so that a database outage
costs the metrics, never the (expensive) training run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from earshot.db.base import utcnow
from earshot.db.session import session_scope
from earshot.training.models import TrainingMetric, TrainingRun, TrainingStage

log = logging.getLogger(__name__)


def upsert_run(*, url: str, name: str, output_uri: str, config: dict[str, Any]) -> str:
    with session_scope(url) as s:
        run = s.scalar(select(TrainingRun).where(TrainingRun.output_uri == output_uri))
        if run is None:
            run = TrainingRun(name=name, output_uri=output_uri, config=config)
            s.add(run)
        run.status = "running"
        run.config = config
        run.error = None
        run.finished_at = None
        s.flush()
        return run.id


def start_stage(
    *,
    url: str,
    run_id: str,
    stage: str,
    position: int,
    fields: dict[str, Any],
    resumed_from_step: int | None,
) -> str:
    """Create or reopen a stage row. On resume, loss points past the checkpoint are dropped:
    the crashed attempt logged them and the resumed one logs them again."""
    with session_scope(url) as s:
        row = s.scalar(
            select(TrainingStage).where(TrainingStage.run_id == run_id, TrainingStage.stage == stage)
        )
        if row is None:
            row = TrainingStage(run_id=run_id, stage=stage, position=position, attempts=1)
            s.add(row)
        else:
            row.attempts = (row.attempts or 0) + 1
        for key, value in fields.items():
            setattr(row, key, value)
        row.status = "running"
        row.error = None
        row.finished_at = None
        row.resumed_from_step = resumed_from_step
        row.step = resumed_from_step or 0
        s.flush()
        s.execute(
            delete(TrainingMetric).where(
                TrainingMetric.stage_id == row.id, TrainingMetric.step > (resumed_from_step or 0)
            )
        )
        run = s.get(TrainingRun, run_id)
        if run is not None:
            run.current_stage = stage
            run.status = "running"
        return row.id


def _set_fields(session: Session, stage_id: str, fields: dict[str, Any]) -> TrainingStage | None:
    row = session.get(TrainingStage, stage_id)
    if row is not None:
        for key, value in fields.items():
            setattr(row, key, value)
    return row


def update_stage(*, url: str, stage_id: str, fields: dict[str, Any]) -> None:
    with session_scope(url) as s:
        _set_fields(s, stage_id, fields)


def add_metric(*, url: str, stage_id: str, point: dict[str, Any]) -> None:
    with session_scope(url) as s:
        s.execute(
            delete(TrainingMetric).where(
                TrainingMetric.stage_id == stage_id, TrainingMetric.step == point["step"]
            )
        )
        s.add(TrainingMetric(stage_id=stage_id, **point))


def finish_stage(*, url: str, stage_id: str, status: str, fields: dict[str, Any], last: bool) -> None:
    with session_scope(url) as s:
        row = _set_fields(s, stage_id, fields)
        if row is None:
            return
        row.status = status
        row.finished_at = utcnow()
        run = s.get(TrainingRun, row.run_id)
        if run is not None:
            if status == "failed":
                run.status = "failed"
                run.error = fields.get("error")
                run.finished_at = utcnow()
            elif last:
                run.status = "succeeded"
                run.finished_at = utcnow()


@dataclass
class StageView:
    run: TrainingRun
    stages: list[TrainingStage]


def list_runs(*, url: str, limit: int = 20, output_uri: str | None = None) -> list[StageView]:
    with session_scope(url) as s:
        q = select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)
        if output_uri is not None:
            q = q.where(TrainingRun.output_uri == output_uri)
        runs = list(s.scalars(q))
        views = []
        for run in runs:
            stages = list(
                s.scalars(
                    select(TrainingStage)
                    .where(TrainingStage.run_id == run.id)
                    .order_by(TrainingStage.position, TrainingStage.started_at)
                )
            )
            views.append(StageView(run=run, stages=stages))
        return views


def loss_curve(*, url: str, stage_id: str) -> list[tuple[int, float]]:
    with session_scope(url) as s:
        rows = s.execute(
            select(TrainingMetric.step, TrainingMetric.loss)
            .where(TrainingMetric.stage_id == stage_id)
            .order_by(TrainingMetric.step)
        )
        return [(int(step), float(loss)) for step, loss in rows]


class Recorder:
    """Best-effort facade used by the runner: logs one warning on the first failure, then
    stops trying for the rest of the stage."""

    def __init__(self, url: str | None, *, enabled: bool) -> None:
        """``url`` None: nothing is recorded."""
        self.url = url or ""
        self.enabled = enabled and url is not None
        self.run_id: str | None = None
        self.stage_id: str | None = None

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return fn(url=self.url, **kwargs)
        except SQLAlchemyError as exc:
            log.warning(
                "training metrics are not stored (%s failed: %s); training goes on",
                what,
                exc.__class__.__name__ + ": " + str(exc).splitlines()[0],
            )
            self.enabled = False
            return None

    def start(
        self,
        *,
        name: str,
        run_uri: str,
        config: dict[str, Any],
        stage: str,
        position: int,
        fields: dict[str, Any],
        resumed_from_step: int | None,
    ) -> None:
        self.run_id = self._call("run", upsert_run, name=name, output_uri=run_uri, config=config)
        if self.run_id is not None:
            self.stage_id = self._call(
                "stage",
                start_stage,
                run_id=self.run_id,
                stage=stage,
                position=position,
                fields=fields,
                resumed_from_step=resumed_from_step,
            )

    def progress(self, point: dict[str, Any], fields: dict[str, Any]) -> None:
        if self.stage_id is None:
            return
        self._call("metric", add_metric, stage_id=self.stage_id, point=point)
        self._call("stage update", update_stage, stage_id=self.stage_id, fields=fields)

    def update(self, fields: dict[str, Any]) -> None:
        if self.stage_id is not None:
            self._call("stage update", update_stage, stage_id=self.stage_id, fields=fields)

    def finish(self, *, status: str, fields: dict[str, Any], last: bool) -> None:
        if self.stage_id is not None:
            self._call(
                "stage finish",
                finish_stage,
                stage_id=self.stage_id,
                status=status,
                fields=fields,
                last=last,
            )
