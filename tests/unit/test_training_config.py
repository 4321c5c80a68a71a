"""The curriculum file: AF3's recipe defaults, validation, and the file the Helm chart renders."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from earshot.errors import ConfigError
from earshot.training.config import RECIPE, load_curriculum, parse_curriculum
from earshot.training.step import lr_factor

CHART = Path(__file__).resolve().parents[2] / "helm" / "earshot-training"


def _stage(name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "datasets": [{"uri": "data/a.jsonl"}], **kw}


def test_recipe_defaults_fill_parts_and_windows(tmp_path: Path) -> None:
    cur = parse_curriculum({"base_model": "m", "stages": [_stage(n) for n in RECIPE]}, base_dir=tmp_path)
    got = {s.name: (s.trainable, s.max_audio_windows, s.think_prompt) for s in cur.stages}
    assert got == {
        "stage1": (["projector"], 1, False),
        "stage2": (["encoder", "projector"], 1, False),
        "stage3": (["encoder", "projector", "llm"], 5, False),
        "stage3_5": (["think_lora"], 20, True),
        "stage4": (["encoder", "projector", "llm"], 20, False),
    }
    assert cur.stage("stage3_5").lora is not None
    # Relative paths are read from the file's directory, not the working directory.
    assert cur.stages[0].datasets[0].uri == str(tmp_path / "data" / "a.jsonl")
    assert cur.base_model == str(tmp_path / "m")


def test_defaults_block_and_overrides() -> None:
    cur = parse_curriculum(
        {
            "defaults": {"batch_size": 4, "learning_rate": 1e-3},
            "stages": [_stage("stage1"), _stage("stage2", batch_size=2, trainable=["encoder"])],
        }
    )
    assert [s.batch_size for s in cur.stages] == [4, 2]
    assert cur.stages[1].trainable == ["encoder"]
    assert cur.stages[0].learning_rate == 1e-3


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        (_stage("stage1", learning_rte=1.0), "learning_rte"),
        (_stage("stage1", trainable=["think_lora", "llm"]), "think_lora trains alone"),
        (_stage("stage1", max_audio_windows=21), "max_audio_windows"),
        (_stage("stage1", datasets=[]), "datasets"),
        ({"name": "custom", "datasets": [{"uri": "a"}]}, "trainable"),
    ],
)
def test_bad_stages_are_refused_with_the_key(stage: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_curriculum({"stages": [stage]})
    assert needle in err.value.message


def test_duplicate_and_unknown_stage_names() -> None:
    with pytest.raises(ConfigError, match="repeated: stage1"):
        parse_curriculum({"stages": [_stage("stage1"), _stage("stage1")]})
    cur = parse_curriculum({"stages": [_stage("stage1")]})
    with pytest.raises(ConfigError, match="stage4"):
        cur.stage("stage4")


def test_schedule_warms_up_then_decays() -> None:
    f = [lr_factor(s, 10, schedule="cosine", warmup=2) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(f[1:]))
    assert lr_factor(9, 10, schedule="linear", warmup=0, min_ratio=0.1) == pytest.approx(0.19)
    assert lr_factor(5, 10, schedule="constant", warmup=0) == 1.0


def test_the_training_charts_curriculum_loads(tmp_path: Path) -> None:
    """The chart renders /config/curriculum.yaml; the runner must accept it as rendered."""
    import helm_python as helm

    assert CHART.is_dir(), f"the training chart is missing at {CHART}"
    values = {
        "stages": {
            name: {"datasets": [{"uri": f"s3://data/{name}.jsonl", "weight": 1.0}]}
            for name in ("stage1", "stage2", "stage3", "stage3_5", "stage4")
        }
    }
    rendered = helm.Chart.load(str(CHART)).render(values, name="t", namespace="ns")
    docs = [
        d
        for path, text in rendered.items()
        if path.endswith((".yaml", ".yml"))
        for d in yaml.safe_load_all(text)
        if d
    ]
    cm = next(d for d in docs if d.get("kind") == "ConfigMap" and "curriculum.yaml" in d.get("data", {}))
    path = tmp_path / "curriculum.yaml"
    path.write_text(cm["data"]["curriculum.yaml"])
    cur = load_curriculum(path)
    assert [s.name for s in cur.stages] == ["stage1", "stage2", "stage3", "stage3_5", "stage4"]
    s35 = cur.stage("stage3_5")
    assert s35.is_lora and s35.lora is not None and s35.think_prompt
    assert cur.stage("stage3").max_audio_windows == 5
    # The chart's per-stage output and resume_from chain are honoured.
    assert cur.stage("stage2").resume_from == cur.stage("stage1").output


def test_the_example_curriculum_is_valid() -> None:
    cur = load_curriculum(Path(__file__).resolve().parents[2] / "examples" / "curriculum.yaml")
    assert [s.name for s in cur.stages] == ["stage1", "stage2", "stage3", "stage3_5", "stage4"]
    assert cur.stage("stage4").max_steps == 2000 and cur.stage("stage1").batch_size == 32
