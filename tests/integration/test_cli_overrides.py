"""`earshot run --model-path` reaches the in-process tasks as a settings copy, not through os.environ."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from earshot.audio.synth import encode_file, tone_with_silences
from earshot.config import Settings, get_settings, reset_settings


def test_run_flags_reach_in_process_tasks_and_leave_the_environment_alone(
    earshot_env: Settings, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli.main import app

    # The environment names a model that does not exist: only the flag can make the job succeed.
    missing = tmp_path / "no-model-here"
    monkeypatch.setenv("EARSHOT_MODEL_PATH", str(missing))
    reset_settings()
    source = encode_file(tone_with_silences(3.0), tmp_path / "tone.wav")
    before = dict(os.environ)
    root = logging.getLogger()  # the CLI points the root logger at its captured stderr
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(
            app, ["run", str(source), "--model-path", str(tiny_model_dir), "--tasks", "caption", "--json"]
        )
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "succeeded", report.get("error")
    assert report["captions"]
    assert dict(os.environ) == before
    assert get_settings().model_path == str(missing)
