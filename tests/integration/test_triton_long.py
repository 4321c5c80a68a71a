"""`earshot run --engine triton --json` on a 25-minute file gives what the local engine gives."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from earshot.audio.synth import encode_file, speech_like_chunks
from earshot.config import Settings
from earshot.engines import reset_engines

# Mostly silence: the planner must still cut 25 minutes into <= 600 s segments at pauses.
SILENCES = [(40.0, 570.0), (590.0, 595.0), (640.0, 1170.0), (1190.0, 1195.0), (1240.0, 1480.0)]
# Fewer prompts per segment than the default: three 600 s segments are slow on a small CPU.
TASKS = "transcribe,events,summarize,speak"
# Ids, paths and the speech file location differ by construction between two jobs.
PER_JOB = {"job_id", "outputs", "speech_uri"}


def _run(monkeypatch: pytest.MonkeyPatch, source: Path, engine: str) -> dict[str, Any]:
    from services.cli.main import app

    # --engine is a per-run override (settings.model_copy), not the environment's EARSHOT_ENGINE
    reset_engines()
    # The CLI points the root logger at its (captured, soon closed) stderr: put ours back.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        result = CliRunner().invoke(app, ["run", str(source), "--engine", engine, "--tasks", TASKS, "--json"])
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_25_minute_file_same_json_as_local(
    triton_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = encode_file(speech_like_chunks(1500.0, SILENCES), tmp_path / "meeting.flac")

    by_triton = _run(monkeypatch, source, "triton")
    by_local = _run(monkeypatch, source, "local")

    assert by_triton["status"] == "succeeded", by_triton.get("error")
    assert set(by_triton) == set(by_local)
    assert by_triton["duration"] == pytest.approx(1500.0)
    spans = [(s["start"], s["end"]) for s in by_triton["segments"]]
    assert len(spans) == 3 and spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(1500.0)
    assert all(b - a <= 600.0 for a, b in spans)
    assert all(s["status"] == "done" for s in by_triton["segments"])
    assert {k: v for k, v in by_triton.items() if k not in PER_JOB} == {
        k: v for k, v in by_local.items() if k not in PER_JOB
    }
    assert by_triton["speech_uri"] and set(by_triton["outputs"]) == set(by_local["outputs"])
    assert Path(by_triton["speech_uri"].removeprefix("file://")).stat().st_size > 1000
