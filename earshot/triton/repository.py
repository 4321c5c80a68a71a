"""The model repository: where it is, and the CPU / other-weights variants made from it.

The shipped ``model_repo/`` targets GPUs. Rather than keeping a second CPU copy that would
drift, a variant is generated from it: the same files with the instance kind and chosen
parameters rewritten.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import earshot
from earshot.af3.batching import CPU_MAX_BATCH_TOKENS
from earshot.errors import ConfigError
from earshot.triton.protocol import PARAM_MODEL_PATH

# The GPU default of 262144 padded tokens would materialise ~15 GB of attention mask on CPU
# for a batch of 600 s segment prompts; CPU_MAX_BATCH_TOKENS says why CPUs batch less.
CPU_PARAMETERS = {"max_batch_tokens": str(CPU_MAX_BATCH_TOKENS)}

_PARAM_RE = r'(key:\s*"{key}"\s*value:\s*\{{\s*string_value:\s*")((?:[^"\\]|\\.)*)(")'


def default_repository() -> Path:
    """``model_repo/`` of this checkout (editable install) or of the working directory."""
    candidates = [Path(earshot.__file__).resolve().parents[1] / "model_repo", Path.cwd() / "model_repo"]
    for path in candidates:
        if (path / "af3" / "config.pbtxt").exists():
            return path
    raise ConfigError(
        "no Triton model repository found (looked for model_repo/ next to the earshot package "
        "and in the working directory); pass --model-repository",
        code="model_repository_not_found",
    )


def model_names(repository: Path) -> list[str]:
    return sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))


def set_parameter(config: str, key: str, value: str) -> str:
    """``config`` with the string parameter ``key`` set to ``value`` (unchanged if absent)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    pattern = re.compile(_PARAM_RE.format(key=re.escape(key)))
    return pattern.sub(lambda m: m.group(1) + escaped + m.group(3), config)


def get_parameter(config: str, key: str) -> str | None:
    match = re.search(_PARAM_RE.format(key=re.escape(key)), config)
    return match.group(2).replace('\\"', '"').replace("\\\\", "\\") if match else None


def to_cpu(config: str) -> str:
    """Instances on CPU. A ``gpus: [...]`` list only makes sense with KIND_GPU, so it goes."""
    config = re.sub(r"\bKIND_GPU\b", "KIND_CPU", config)
    return re.sub(r"\n\s*gpus:\s*\[[^\]]*\]", "", config)


def prepare_repository(
    source: Path,
    dest: Path,
    *,
    cpu: bool = False,
    model_path: str | None = None,
    parameters: Mapping[str, str] | None = None,
) -> Path:
    """Copy ``source`` to ``dest`` (replaced), rewriting each model's config.pbtxt.

    ``model_path`` sets the weights location of every model that has one; ``parameters``
    sets any other string parameter where a model declares it. ``cpu`` turns instances into
    CPU instances and applies ``CPU_PARAMETERS`` (memory bounds only, no behaviour).
    """
    if not model_names(source):
        raise ConfigError(f"{source} holds no model (no */config.pbtxt)", code="model_repository_not_found")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    values = {**(CPU_PARAMETERS if cpu else {}), **(parameters or {})}
    if model_path is not None:
        values[PARAM_MODEL_PATH] = _absolute_if_local(model_path)
    for cfg in dest.glob("*/config.pbtxt"):
        text = cfg.read_text()
        if cpu:
            text = to_cpu(text)
        for key, value in values.items():
            text = set_parameter(text, key, value)
        cfg.write_text(text)
    return dest


def _absolute_if_local(model_path: str) -> str:
    # The server runs with its own working directory; a relative path would point elsewhere.
    if "://" in model_path or model_path.startswith("$"):
        return model_path
    return str(Path(model_path).expanduser().resolve())
