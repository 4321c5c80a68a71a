"""Two ranks under torchrun on CPU (gloo), launched like the chart launches a stage (the chart
runs the ``earshot`` script; ``-m earshot.training`` is the same Typer app without the other
CLI areas' imports). Stage 1 (projector) runs as DDP and stage 3 (the LLM trains) as FSDP,
the runner's automatic choices."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from earshot.db import migrate
from earshot.training.demo import make_dataset, write_curriculum


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_ranks_ddp_then_fsdp(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n=4, seconds=1.0, long_seconds=31.0)
    common = {
        "datasets": [{"uri": str(data.captions)}],
        "max_steps": 1,
        "batch_size": 1,
        "log_every_steps": 1,
    }
    config = write_curriculum(
        tmp_path / "curriculum.yaml",
        {
            "run": "ddp",
            "base_model": str(tiny_model_dir),
            "checkpoint_root": str(tmp_path / "runs"),
            "cache_dir": str(tmp_path / "cache"),
            "stages": [{"name": "stage1", **common}, {"name": "stage3", **common}],
        },
    )
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate.upgrade("0004_training", url=db)
    bindir = Path(sys.executable).parent
    torchrun = shutil.which("torchrun", path=str(bindir)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EARSHOT_LOG_JSON": "false"}
    proc = subprocess.run(
        [
            torchrun, "--nnodes=1", "--nproc-per-node=2", f"--master-port={_port()}",
            "--master-addr=127.0.0.1", "-m", "workers.training", "run", "--config", str(config), "--database-url", db, "--device", "cpu",
        ],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    from earshot.training.records import list_runs

    (view,) = list_runs(url=db)
    rows = {s.stage: s for s in view.stages}
    assert (rows["stage1"].strategy, rows["stage1"].world_size) == ("ddp", 2)
    assert (rows["stage3"].strategy, rows["stage3"].world_size) == ("fsdp", 2)
    assert all(s.status == "succeeded" and s.step == 1 for s in rows.values())
    from safetensors.torch import load_file

    base = load_file(str(tiny_model_dir / "model.safetensors"))
    for stage in ("stage1", "stage3"):
        saved = load_file(str(tmp_path / "runs" / "ddp" / stage / "model" / "model.safetensors"))
        # Gathered from the shards: every tensor whole, none left at its base value by mistake.
        assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in base.items()}
    changed = [k for k, v in saved.items() if not (v == base[k]).all()]
    assert any("language_model" in k for k in changed) and any("audio_tower" in k for k in changed)
