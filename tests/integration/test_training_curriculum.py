"""All five stages on the tiny model, chained as the training chart chains them.

One run (two steps a stage) serves every check: what froze stayed bit-identical, what trained
changed, broken records were skipped and counted, the export loads in the local engine and
runs with and without the think adapter, and the rows are in the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from earshot.config import Settings
from earshot.db import migrate
from earshot.training.config import load_curriculum
from earshot.training.demo import demo_curriculum, make_dataset, write_curriculum
from earshot.training.trainer import StageResult, run_curriculum

STAGES = ["stage1", "stage2", "stage3", "stage3_5", "stage4"]
TRAINS = {
    "stage1": {"projector"},
    "stage2": {"encoder", "projector"},
    "stage3": {"encoder", "projector", "llm"},
    "stage3_5": set(),  # base frozen: only the adapter learns
    "stage4": {"encoder", "projector", "llm"},
}


@dataclass
class Run:
    root: Path
    base: Path
    results: dict[str, StageResult]
    db_url: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Run:
    root = tmp_path_factory.mktemp("curriculum")
    data = make_dataset(root / "data", n=4, seconds=1.0, long_seconds=31.0)
    spec = demo_curriculum(data, model=tiny_model_dir, output=root / "runs", steps=2, batch_size=1)
    spec["defaults"].update(save_every_steps=0, log_every_steps=1)
    spec["cache_dir"] = str(root / "cache")
    # Exercise gradient checkpointing where AF3's recipe turns it on.
    for st in spec["stages"]:
        if st["name"] in ("stage3", "stage3_5"):
            st["gradient_checkpointing"] = True
    config = write_curriculum(root / "curriculum.yaml", spec)
    db_url = f"sqlite:///{root / 'train.db'}"
    migrate.upgrade("0004_training", url=db_url)
    results = run_curriculum(load_curriculum(config), database_url=db_url, settings=Settings())
    return Run(root=root, base=tiny_model_dir, results={r.stage: r for r in results}, db_url=db_url)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _part(name: str) -> str:
    # Saved names follow the released checkpoint's layout (no "model." prefix).
    bare = name.removeprefix("model.")
    if bare.startswith("audio_tower."):
        return "encoder"
    if bare.startswith("multi_modal_projector."):
        return "projector"
    assert bare.startswith(("language_model.", "lm_head.")), name
    return "llm"


def _model_dir(result: StageResult) -> Path:
    assert result.model_uri is not None
    from earshot import storage

    return storage.parse_uri(result.model_uri).path


@pytest.mark.parametrize("stage", STAGES)
def test_frozen_parts_stay_bit_identical_and_trained_parts_change(run: Run, stage: str) -> None:
    result = run.results[stage]
    assert result.status == "succeeded" and result.steps == 2
    assert result.first_loss is not None and result.last_loss is not None
    i = STAGES.index(stage)
    before = _weights(run.base if i == 0 else _model_dir(run.results[STAGES[i - 1]]))
    after = _weights(_model_dir(result))
    assert before.keys() == after.keys()
    changed = {_part(n) for n in before if not torch.equal(before[n], after[n])}
    frozen = [n for n in before if _part(n) not in TRAINS[stage]]
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert changed == TRAINS[stage]
    # AF3 keeps the encoder's positional table fixed even when the encoder trains.
    pos = next(n for n in before if "audio_tower.embed_positions" in n)
    assert torch.equal(before[pos], after[pos])


def test_think_stage_trains_an_adapter_that_later_stages_carry(run: Run) -> None:
    from peft import PeftConfig

    think = _model_dir(run.results["stage3_5"]) / "think"
    config = PeftConfig.from_pretrained(str(think))
    assert config.r == 8
    lora = load_file(str(think / "adapter_model.safetensors"))
    lora_b = [v for k, v in lora.items() if "lora_B" in k]
    # peft starts B at zero: non-zero B means the adapter learned.
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)
    final = _model_dir(run.results["stage4"]) / "think" / "adapter_model.safetensors"
    assert load_file(str(final)).keys() == lora.keys()


def test_export_loads_in_the_local_engine_and_runs(run: Run) -> None:
    from earshot.af3.chat import single_turn
    from earshot.af3.runtime import AF3Runtime
    from earshot.training.demo import tone_clip

    export = _model_dir(run.results["stage4"])
    assert export.name == "model" and (export / "tokenizer.json").exists()
    runtime = AF3Runtime.load(export, device="cpu")
    assert runtime.think_loaded
    embeds = runtime.encode(tone_clip(1, 2.0))
    tok = runtime.tokenizer
    plain = runtime.generate(single_turn(tok, "Describe the audio."), [embeds], max_new_tokens=6)
    think = runtime.generate(
        single_turn(tok, "Describe the audio.", think=True), [runtime.encode(tone_clip(1, 2.0), think=True)],
        max_new_tokens=6, think=True,
    )
    assert plain.new_tokens > 0 and think.new_tokens > 0
    assert plain.prompt_tokens == 50 + (think.prompt_tokens - 50) - _suffix_tokens(runtime)


def _suffix_tokens(runtime: object) -> int:
    from earshot.af3.chat import single_turn

    tok = runtime.tokenizer  # type: ignore[attr-defined]
    a = len(tok(single_turn(tok, "Describe the audio."))["input_ids"])
    b = len(tok(single_turn(tok, "Describe the audio.", think=True))["input_ids"])
    return b - a


def test_broken_records_were_skipped_and_counted(run: Run) -> None:
    s1 = run.results["stage1"]
    # captions (4 good) + broken.jsonl (2 good, 5 broken: malformed x2, missing, undecodable, too long)
    assert s1.skipped["total"] == 5
    assert s1.skipped["reasons"] == {"malformed": 2, "missing_audio": 1, "undecodable": 1, "too_long": 1}
    assert run.results["stage2"].skipped["total"] == 0


def test_runs_and_stage_metrics_are_in_the_database(run: Run) -> None:
    from earshot.training.records import list_runs, loss_curve

    views = list_runs(url=run.db_url)
    assert len(views) == 1
    view = views[0]
    assert view.run.status == "succeeded" and view.run.output_uri.endswith("/runs/demo")
    assert [s.stage for s in view.stages] == STAGES
    for row in view.stages:
        assert row.status == "succeeded" and row.step == row.total_steps == 2
        assert row.first_loss == pytest.approx(run.results[row.stage].first_loss)
        assert row.last_loss == pytest.approx(run.results[row.stage].last_loss)
        assert row.tokens > 0 and row.tokens_per_s and row.model_uri
        assert [step for step, _ in loss_curve(url=run.db_url, stage_id=row.id)] == [1, 2]
    assert view.stages[0].records_skipped == 5
    assert view.stages[0].skipped_reasons["malformed"] == 2


def test_status_command_and_rerun_is_a_no_op(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    from services.cli.train import app

    runner = CliRunner()
    out = runner.invoke(app, ["status", "--database-url", run.db_url, "--json"])
    assert out.exit_code == 0, out.output
    assert '"stage3_5"' in out.output and '"succeeded"' in out.output
    root = run.root / "runs" / "demo"
    out = runner.invoke(app, ["status", "--database-url", run.db_url, "--output", str(root)])
    assert out.exit_code == 0, out.output
    assert "stage4" in out.output and "done" in out.output
    # A Job restarted after its stage finished finds DONE.json and does nothing.
    out = runner.invoke(
        app,
        [
            "run", "--config", str(run.root / "curriculum.yaml"), "--stage", "stage2",
            "--output", str(root / "stage2"), "--database-url", run.db_url,
        ],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "[stage2] already done" in caplog.text
