"""The curriculum file: one entry per stage of AF3's recipe, validated before any GPU is held.

The Helm chart renders this file (snake_case keys, ``extra`` merged verbatim into a stage), so
the key names here are the chart's. Unknown keys are refused: a typo in a learning-rate key
must not silently train with the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from earshot.errors import ConfigError

if TYPE_CHECKING:
    from earshot.config import Settings

STAGE_ORDER = ("stage1", "stage2", "stage3", "stage3_5", "stage4")
Part = Literal["projector", "encoder", "llm", "think_lora"]
Precision = Literal["auto", "fp32", "bf16", "bf16-pure"]
Strategy = Literal["auto", "single", "ddp", "fsdp"]

# AF3's recipe: which parts learn and how many 30 s windows a sample may hold, per stage.
RECIPE: dict[str, dict[str, Any]] = {
    "stage1": {"trainable": ["projector"], "max_audio_windows": 1},
    "stage2": {"trainable": ["encoder", "projector"], "max_audio_windows": 1},
    "stage3": {"trainable": ["encoder", "projector", "llm"], "max_audio_windows": 5},
    "stage3_5": {"trainable": ["think_lora"], "max_audio_windows": 20},
    "stage4": {"trainable": ["encoder", "projector", "llm"], "max_audio_windows": 20},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    uri: str = Field(description="JSON or JSONL manifest: path, file:// or s3://")
    weight: float = Field(default=1.0, gt=0)
    name: str | None = None
    # None: follow the stage (the think stage appends the think suffix to the last question).
    think_prompt: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _manifest_alias(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"uri": data}
        if isinstance(data, dict) and "manifest" in data and "uri" not in data:
            data = dict(data)
            data["uri"] = data.pop("manifest")
        return data

    @property
    def label(self) -> str:
        return self.name or Path(self.uri.rstrip("/")).stem


class LoraSpec(_Strict):
    rank: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0, lt=1)


class StageConfig(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = ""
    trainable: list[Part]
    max_audio_windows: int = Field(ge=1, le=20)
    datasets: list[DatasetSpec] = Field(min_length=1)
    learning_rate: float = Field(default=1e-4, gt=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    warmup_steps: int = Field(default=0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)
    epochs: float = Field(default=1.0, gt=0)
    # 0 (the chart's default) means "run the epochs".
    max_steps: int = Field(default=0, ge=0)
    batch_size: int = Field(default=1, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    save_every_steps: int = Field(default=500, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every_steps: int = Field(default=10, ge=1)
    max_seq_len: int | None = Field(default=None, ge=16)
    think_prompt: bool = False
    lora: LoraSpec | None = None
    strategy: Strategy = "auto"
    num_workers: int = Field(default=0, ge=0)
    seed: int = 0
    # Written by the chart; the CLI's --resume-from / --output win over them.
    resume_from: str | None = None
    output: str | None = None

    @field_validator("trainable")
    @classmethod
    def _parts(cls, parts: list[str]) -> list[str]:
        if not parts:
            raise ValueError("trainable must name at least one part")
        if "think_lora" in parts and len(parts) > 1:
            raise ValueError("think_lora trains alone: the base model stays frozen under the adapter")
        return sorted(set(parts), key=parts.index)

    @model_validator(mode="after")
    def _lora_default(self) -> StageConfig:
        if self.is_lora and self.lora is None:
            self.lora = LoraSpec()
        return self

    @property
    def is_lora(self) -> bool:
        return self.trainable == ["think_lora"]


class Curriculum(_Strict):
    run: str = Field(default="af3-curriculum", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base_model: str | None = None
    checkpoint_root: str | None = None
    cache_dir: str = ".earshot/cache/training"
    device: str = "auto"
    record_metrics: bool = True
    stages: list[StageConfig] = Field(min_length=1)
    source: str | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _unique(self) -> Curriculum:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
        return self

    def stage(self, name: str) -> StageConfig:
        for st in self.stages:
            if st.name == name:
                return st
        raise ConfigError(
            f"stage {name!r} is not in the curriculum (it has: {', '.join(s.name for s in self.stages)})",
            code="unknown_stage",
        )

    def previous(self, name: str) -> StageConfig | None:
        names = [s.name for s in self.stages]
        i = names.index(name)
        return self.stages[i - 1] if i > 0 else None

    def is_last(self, name: str) -> bool:
        return self.stages[-1].name == name


def _with_recipe(stage: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = {**RECIPE.get(str(stage.get("name")), {}), **defaults, **stage}
    if merged.get("trainable") is None:
        merged.pop("trainable", None)
    if "think_prompt" not in stage and "think_prompt" not in defaults:
        merged["think_prompt"] = merged.get("trainable") == ["think_lora"]
    # The chart renders an absent LoRA block as null and an unset limit as 0.
    if merged.get("lora") is None:
        merged.pop("lora", None)
    if merged.get("max_steps") is None:
        merged["max_steps"] = 0
    return merged


def _resolve_relative(uri: str, base_dir: Path | None) -> str:
    if base_dir is None or "://" in uri or uri.startswith("/"):
        return uri
    return str((base_dir / uri).resolve())


def parse_curriculum(data: Any, *, base_dir: Path | None = None, source: str | None = None) -> Curriculum:
    """Validate a curriculum mapping. Relative paths are taken from the file's directory."""
    if not isinstance(data, dict):
        raise ConfigError("a curriculum file must be a mapping with a 'stages' list", code="bad_config")
    data = dict(data)
    defaults = data.pop("defaults", None) or {}
    stages = data.get("stages")
    if not isinstance(stages, list):
        raise ConfigError("the curriculum has no 'stages' list", code="bad_config")
    data["stages"] = [_with_recipe(s, defaults) if isinstance(s, dict) else s for s in stages]
    try:
        cur = Curriculum.model_validate({**data, "source": source})
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError(
            f"invalid curriculum{f' {source}' if source else ''}:\n" + "\n".join(lines),
            code="bad_config",
        ) from exc
    for st in cur.stages:
        for ds in st.datasets:
            ds.uri = _resolve_relative(ds.uri, base_dir)
    if cur.base_model:
        cur.base_model = _resolve_relative(cur.base_model, base_dir)
    if cur.checkpoint_root:
        cur.checkpoint_root = _resolve_relative(cur.checkpoint_root, base_dir)
    return cur


def load_curriculum(uri: str | Path, *, settings: Settings | None = None) -> Curriculum:
    """Read and validate a curriculum from a local path, file:// or s3:// URI (S3 needs ``settings``)."""
    from earshot import storage

    text_uri = str(uri)
    ref = storage.parse_uri(text_uri)
    try:
        raw = storage.read_bytes(ref.uri, max_bytes=16 * 1024 * 1024, settings=settings)
    except Exception as exc:
        raise ConfigError(f"cannot read curriculum {text_uri}: {exc}", code="bad_config") from exc
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"curriculum {text_uri} is not valid YAML: {exc}", code="bad_config") from exc
    base_dir = ref.path.parent if ref.scheme == "file" else None
    return parse_curriculum(data, base_dir=base_dir, source=text_uri)
