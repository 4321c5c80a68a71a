"""Overfitting four examples, and a run killed mid-stage that resumes where it checkpointed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from earshot.config import Settings
from earshot.db import migrate
from earshot.training import checkpoint as ckpt
from earshot.training.config import Curriculum, parse_curriculum
from earshot.training.demo import DemoData, make_dataset
from earshot.training.trainer import run_stage

# local files only: the defaults are all the storage needs
SETTINGS = Settings()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return make_dataset(tmp_path_factory.mktemp("data"), n=4, seconds=1.0, long_seconds=31.0)


def _curriculum(data: DemoData, model: Path, root: Path, **stage: Any) -> Curriculum:
    spec = {
        "name": "stage1",
        "datasets": [{"uri": str(data.captions)}],
        "batch_size": 2,
        "learning_rate": 1e-2,
        "lr_schedule": "cosine",
        "warmup_steps": 1,
        "save_every_steps": 2,
        "keep_checkpoints": 3,
        "log_every_steps": 1,
        **stage,
    }
    return parse_curriculum(
        {
            "run": "t",
            "base_model": str(model),
            "checkpoint_root": str(root),
            "cache_dir": str(root / "cache"),
            "stages": [spec],
        }
    )


def test_loss_falls_clearly_when_overfitting_four_examples(
    data: DemoData, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cur = _curriculum(
        data, tiny_model_dir, tmp_path, trainable=["projector", "llm"], max_steps=6, learning_rate=2e-2,
        lr_schedule="constant", warmup_steps=0, save_every_steps=0,
    )  # fmt: skip
    cur.record_metrics = False
    losses: list[float] = []
    result = run_stage(cur, "stage1", on_step=lambda step, m: losses.append(m["loss"]), settings=SETTINGS)
    assert len(losses) == 6
    # Two steps make one pass over the four examples: compare whole passes.
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.7 * first, losses
    assert result.last_loss == pytest.approx(losses[-1])


class Killed(Exception):
    pass


def _kill_at(step: int) -> Any:
    def hook(s: int, metrics: dict[str, Any]) -> None:
        if s == step:
            raise Killed(f"killed after step {s}")

    return hook


def test_a_killed_run_resumes_at_its_checkpoint_with_the_same_optimizer_state(
    data: DemoData, tiny_model_dir: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade("0004_training", url=db)
    cur = _curriculum(data, tiny_model_dir, tmp_path / "runs", max_steps=4, batch_size=1)
    straight = str(tmp_path / "straight" / "stage1")
    crashed = str(tmp_path / "runs" / "t" / "stage1")
    reference = run_stage(cur, "stage1", output=straight, database_url=None, settings=SETTINGS)
    assert reference.steps == 4

    with pytest.raises(Killed):
        run_stage(cur, "stage1", database_url=db, on_step=_kill_at(3), settings=SETTINGS)
    assert ckpt.latest_checkpoint(crashed, settings=SETTINGS) is not None
    assert ckpt.read_json(f"{crashed}/DONE.json", settings=SETTINGS) is None
    state = ckpt.read_json(f"{ckpt.latest_checkpoint(crashed, settings=SETTINGS)}/state.json", settings=SETTINGS)
    assert state is not None and state["step"] == 2

    # Optimizer state written by the crashed run equals the uninterrupted run's at step 2.
    def opt(run_dir: str) -> dict[str, Any]:
        path = Path(run_dir.removeprefix("file://")) / "checkpoints" / "step-00000002" / "optimizer.pt"
        return torch.load(path, weights_only=True)  # type: ignore[no-any-return]

    _assert_same(opt(crashed), opt(straight))

    # Restoring that checkpoint into a fresh model gives back exactly that optimizer state.
    restored = _restore(tiny_model_dir, cur, f"{crashed}/checkpoints/step-00000002", tmp_path)
    _assert_same(restored, opt(crashed))

    steps_after: list[int] = []
    resumed = run_stage(cur, "stage1", database_url=db, on_step=lambda s, m: steps_after.append(s), settings=SETTINGS)
    assert resumed.resumed_from_step == 2
    assert steps_after == [3, 4]
    # Same data order, schedule and optimizer state: the result is bit-identical to the
    # run that was never interrupted.
    a = load_file(str(Path(straight) / "model" / "model.safetensors"))
    b = load_file(str(Path(crashed) / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.last_loss == pytest.approx(reference.last_loss, abs=0)

    from earshot.training.records import list_runs, loss_curve

    (view,) = list_runs(url=db)
    (row,) = view.stages
    assert (row.status, row.attempts, row.resumed_from_step, row.step) == ("succeeded", 2, 2, 4)
    # Points the crashed attempt logged past its checkpoint were replaced, not duplicated.
    assert [s for s, _ in loss_curve(url=db, stage_id=row.id)] == [1, 2, 3, 4]


def _restore(model_dir: Path, cur: Curriculum, uri: str, tmp_path: Path) -> dict[str, Any]:
    from transformers import AudioFlamingo3ForConditionalGeneration

    from earshot.training.parts import prepare_model
    from earshot.training.step import build_optimizer

    model = AudioFlamingo3ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model = prepare_model(model, trainable=["projector"], precision="fp32", gradient_checkpointing=False)
    optimizer = build_optimizer(model, lr=cur.stages[0].learning_rate)
    ckpt.load_checkpoint(uri, model=model, optimizer=optimizer, cache=tmp_path / "cache", settings=SETTINGS)
    _, osd = ckpt.gather_training_state(model, optimizer, distributed=False)
    return osd


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            if k == "lr":
                continue  # set from the schedule before each step
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b
