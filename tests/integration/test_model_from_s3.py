"""The local engine loads an AF3 checkpoint from an S3 prefix (moto_server), mirrored once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from earshot import storage
from earshot.af3.loading import resolve_model_dir
from earshot.config import get_settings
from earshot.engines.base import Ask
from earshot.engines.local import LocalEngine
from earshot.errors import ConfigError
from tests.fixtures.earshot import apply_env


def test_checkpoint_on_s3_loads_and_answers(
    s3_bucket: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"s3://{s3_bucket}/models/tiny"
    for path in sorted(tiny_model_dir.rglob("*")):
        if path.is_file():
            storage.put_file(f"{prefix}/{path.relative_to(tiny_model_dir).as_posix()}", path, settings=get_settings())
    settings = apply_env(
        monkeypatch, model_path=prefix + "/", model_cache_dir=str(tmp_path / "cache"), max_new_tokens="6"
    )

    local = resolve_model_dir(settings.model_path, settings)
    assert (local / "config.json").exists() and (local / "think" / "adapter_config.json").exists()
    mtime = (local / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir(settings.model_path, settings) == local
    assert (local / "model.safetensors").stat().st_mtime_ns == mtime  # not fetched again

    engine = LocalEngine.from_settings(settings)
    assert engine.has_think_adapter
    (answer,) = engine.generate([Ask("Describe the audio.", audio=0)], audios=[np.zeros(16000, dtype=np.float32)])
    assert isinstance(answer.text, str) and answer.stop in ("eos", "length")

    with pytest.raises(ConfigError) as err:
        resolve_model_dir(f"s3://{s3_bucket}/models/missing/", settings)
    assert err.value.code == "model_not_found"
