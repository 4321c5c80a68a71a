"""Curriculum, manifests, audio and outputs on S3 (a real moto server), as in the chart."""

from __future__ import annotations

from pathlib import Path

import yaml

from earshot import storage
from earshot.config import get_settings
from earshot.training import checkpoint as ckpt
from earshot.training.config import load_curriculum
from earshot.training.demo import make_dataset
from earshot.training.trainer import run_stage


def _upload(local: Path, uri: str) -> None:
    for path in sorted(local.rglob("*")):
        if path.is_file():
            storage.put_file(storage.join_uri(uri, path.relative_to(local).as_posix()), path, settings=get_settings())


def test_stage_reads_and_writes_s3(s3_bucket: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}"
    data = make_dataset(tmp_path / "data", n=2, seconds=1.0, long_seconds=31.0)
    _upload(data.root, f"{root}/data")
    _upload(tiny_model_dir, f"{root}/models/base")
    spec = {
        "run": "s3run",
        "base_model": f"{root}/models/base",
        "checkpoint_root": f"{root}/runs",
        "cache_dir": str(tmp_path / "cache"),
        "record_metrics": False,
        "stages": [
            {
                "name": "stage1",
                "datasets": [{"uri": f"{root}/data/captions.jsonl"}, {"uri": f"{root}/data/broken.jsonl"}],
                "max_steps": 2,
                "batch_size": 1,
                "save_every_steps": 1,
                "keep_checkpoints": 1,
            }
        ],
    }
    storage.put_bytes(f"{root}/curriculum.yaml", yaml.safe_dump(spec).encode(), settings=get_settings())
    cur = load_curriculum(f"{root}/curriculum.yaml", settings=get_settings())
    out = f"{root}/runs/s3run/stage1"
    result = run_stage(cur, "stage1", output=out, resume_from=f"{root}/models/base", settings=get_settings())
    assert result.status == "succeeded"
    # Sounds named relative to an S3 manifest resolve beside it; the missing one is counted.
    assert result.skipped["reasons"]["missing_audio"] == 1
    assert result.model_uri == f"{out}/model"
    keys = {storage.parse_uri(i.uri).key for i in storage.list_objects(f"{out}/", settings=get_settings())}
    assert "runs/s3run/stage1/DONE.json" in keys
    assert "runs/s3run/stage1/model/model.safetensors" in keys
    # keep_checkpoints=1: only the checkpoint of step 1 was taken (none at the end) and kept.
    assert {k.split("/")[4] for k in keys if "/checkpoints/step-" in k} == {"step-00000001"}
    # The next stage, given this output as --resume-from, starts from the exported model,
    # which loads from S3 in the local engine.
    start = ckpt.resolve_start(output=f"{root}/runs/s3run/stage2", resume_from=out, settings=get_settings())
    assert start.model_uri == f"{out}/model" and start.checkpoint_uri is None
    from earshot.af3.runtime import AF3Runtime

    runtime = AF3Runtime.load(ckpt.model_dir(start.model_uri, cache=tmp_path / "models", settings=get_settings()), device="cpu")
    assert runtime.think_loaded  # the base's think/ adapter was carried over
