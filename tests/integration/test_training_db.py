"""The training tables: migration 0004 matches the models; a run's rows on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from earshot.config import Settings
from earshot.db import migrate
from earshot.db.base import Base
from earshot.training import models
from earshot.training.config import parse_curriculum
from earshot.training.demo import make_dataset
from earshot.training.trainer import run_stage

TABLES = {"training_runs", "training_stages", "training_metrics"}


def test_migration_matches_the_models_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade("0004_training", url=url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            ours = [t for name, t in Base.metadata.tables.items() if name in TABLES]
            assert {t.name for t in ours} == TABLES and models.TrainingRun.__table__ in ours
            diff = [d for d in compare_metadata(ctx, Base.metadata) if _table_of(d) in TABLES]
        assert diff == []
        migrate.downgrade("0001", url=url)
        assert not TABLES & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _table_of(diff: object) -> str | None:
    item = diff[0] if isinstance(diff, list) else diff
    for part in item if isinstance(item, tuple) else ():
        table = getattr(part, "table", None)
        name = getattr(table, "name", None) or getattr(part, "name", None)
        if isinstance(name, str) and name in TABLES:
            return name
    return None


def test_a_run_records_its_rows_on_postgres(pg_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=2, seconds=1.0, long_seconds=31.0)
    cur = parse_curriculum(
        {
            "run": "pg",
            "base_model": str(tiny_model_dir),
            "checkpoint_root": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"),
            "stages": [
                {
                    "name": "stage1",
                    "datasets": [{"uri": str(data.captions)}, {"uri": str(data.broken)}],
                    "max_steps": 2,
                    "batch_size": 1,
                    "log_every_steps": 1,
                    "save_every_steps": 0,
                }
            ],
        }
    )
    result = run_stage(cur, "stage1", database_url=pg_url, settings=Settings())
    from earshot.training.records import list_runs, loss_curve

    view = next(v for v in list_runs(url=pg_url) if v.run.output_uri == result.output.rsplit("/", 1)[0])
    assert view.run.status == "succeeded" and view.run.config["run"] == "pg"
    (row,) = view.stages
    assert row.stage == "stage1" and row.status == "succeeded" and row.step == 2
    assert row.trainable == ["projector"] and row.precision == "fp32" and row.world_size == 1
    assert row.records_skipped == 5 and row.skipped_reasons["missing_audio"] == 1
    assert row.first_loss == pytest.approx(result.first_loss)
    assert row.model_uri == result.model_uri
    curve = loss_curve(url=pg_url, stage_id=row.id)
    assert [s for s, _ in curve] == [1, 2] and curve[-1][1] == pytest.approx(result.last_loss)
