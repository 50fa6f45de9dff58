"""The job spec: one pydantic schema shared by the API, the worker, the trainer and the CLI.

A spec is `{kind, name, config, parent, resources, priority, max_restarts}`; `kind` picks the
schema of `config`. Unknown keys are rejected everywhere and every error names its field path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from sgmim.data.config import DownstreamDataConfig, PretrainDataConfig
from sgmim.models.config import EncoderConfig, ModelConfig, StrictModel
from sgmim.train.config import DeepSpeedConfig, OptimConfig, ScheduleConfig

JobKind = Literal["pretrain", "finetune", "evaluate"]

# A child names its parent job; this is the kind the parent must be.
REQUIRED_PARENT_KIND: dict[str, str] = {"finetune": "pretrain", "evaluate": "finetune"}


class ParentRef(StrictModel):
    job_id: str = Field(min_length=1, max_length=64)
    checkpoint: str | None = Field(
        None, max_length=256, description="a checkpoint name of the parent; default: its export")


class Resources(StrictModel):
    gpus: int = Field(1, ge=1, le=64, description="processes per node: GPUs on a GPU box, "
                                                    "CPU processes on a CPU-only worker")
    nodes: int = Field(1, ge=1, le=64)
    gpu_type: str | None = Field(
        None, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$",
        description="worker queue for this GPU type (None: the default queue)")


class PretrainConfig(StrictModel):
    model: ModelConfig = ModelConfig()
    data: PretrainDataConfig = PretrainDataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig(epochs=100)
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()


class HeadConfig(StrictModel):
    kind: Literal["glpdepth", "dpt", "upernet"] = "glpdepth"
    channels: int = Field(512, ge=8, le=4096, description="decoder width")
    max_depth: float = Field(80.0, gt=0.0, description="depth: sigmoid · max_depth, metres")
    num_classes: int = Field(150, ge=2, le=10000, description="segmentation classes")
    aux_weight: float = Field(0.4, ge=0.0, description="UperNet auxiliary FCN head weight")
    silog_lambda: float = Field(0.5, ge=0.0, le=1.0)


class EvalOptions(StrictModel):
    flip: bool = Field(False, description="average with the horizontally flipped prediction")
    crop: Literal["none", "garg", "eigen"] = Field("none", description="depth evaluation crop")
    min_depth: float = Field(1e-3, ge=0.0)
    max_depth: float | None = Field(None, gt=0.0, description="default: the head's max_depth")
    batch_size: int = Field(8, ge=1, le=4096)


InitSource = Literal["parent", "file", "random"]


class FinetuneConfig(StrictModel):
    task: Literal["depth", "segmentation"] = "depth"
    init: InitSource = Field("parent", description="encoder weights: the parent's export, a file, "
                                                    "or random (only when asked, for baselines)")
    init_path: str | None = Field(None, description="init file: an encoder .safetensors")
    encoder: EncoderConfig | None = Field(
        None, description="default: the timm model recorded in the parent's export")
    head: HeadConfig = HeadConfig()
    data: DownstreamDataConfig = DownstreamDataConfig()
    optim: OptimConfig = OptimConfig(base_lr=1e-4, warmup_epochs=1, schedule="poly",
                                     layer_decay=0.9, min_lr=0.0, clip_grad=None)
    schedule: ScheduleConfig = ScheduleConfig(epochs=25)
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    eval: EvalOptions = EvalOptions()

    @model_validator(mode="after")
    def _check_init(self) -> FinetuneConfig:
        _check_init_source(self.init, self.init_path, self.encoder)
        return self


class EvaluateConfig(StrictModel):
    init: Literal["parent", "file"] = "parent"
    init_path: str | None = Field(None, description="init file: a fine-tuned model .safetensors")
    data: DownstreamDataConfig = DownstreamDataConfig()
    split: str = Field("val", description="which split of data to evaluate")
    eval: EvalOptions = EvalOptions()

    @model_validator(mode="after")
    def _check_init(self) -> EvaluateConfig:
        if self.init == "file" and not self.init_path:
            raise FieldError("init_path", "init: file needs init_path")
        return self


class FieldError(ValueError):
    """Raised by a model validator to name the field a cross-field rule is about."""

    def __init__(self, path: str, message: str):
        self.path, self.message = path, message
        super().__init__(message)


def _check_init_source(init: str, init_path: str | None, encoder: EncoderConfig | None) -> None:
    if init == "file" and not init_path:
        raise FieldError("init_path", "init: file needs init_path")
    if init == "random" and encoder is None:
        raise FieldError("encoder", "init: random needs encoder (no parent export to copy it from)")


class JobBase(StrictModel):
    name: str = Field(min_length=1, max_length=128)
    parent: ParentRef | None = None
    resources: Resources = Resources()
    priority: int = Field(5, ge=0, le=9, description="9 runs first")
    max_restarts: int = Field(2, ge=0, le=20)


class PretrainJob(JobBase):
    kind: Literal["pretrain"]
    config: PretrainConfig = PretrainConfig()

    @model_validator(mode="after")
    def _no_parent(self) -> PretrainJob:
        if self.parent is not None:
            raise FieldError("parent", "a pretrain job takes no parent")
        return self


class FinetuneJob(JobBase):
    kind: Literal["finetune"]
    config: FinetuneConfig = FinetuneConfig()

    @model_validator(mode="after")
    def _parent_when_needed(self) -> FinetuneJob:
        if self.config.init == "parent" and self.parent is None:
            raise FieldError("parent", "config.init is parent but no parent is given")
        return self


class EvaluateJob(JobBase):
    kind: Literal["evaluate"]
    config: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _parent_when_needed(self) -> EvaluateJob:
        if self.config.init == "parent" and self.parent is None:
            raise FieldError("parent", "config.init is parent but no parent is given")
        return self


AnyJob = PretrainJob | FinetuneJob | EvaluateJob
JobSpec = Annotated[AnyJob, Field(discriminator="kind")]
_adapter: TypeAdapter[AnyJob] = TypeAdapter(JobSpec)


class SpecError(ValueError):
    """A job spec that does not validate; `errors` are `(field path, message)` pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in errors))


def error_path(loc: tuple[Any, ...]) -> str:
    """pydantic's location without the union tag: ('pretrain', 'config', 'optim', 'base_lr')
    → 'config.optim.base_lr'."""
    parts = list(loc)
    if parts and parts[0] in ("pretrain", "finetune", "evaluate"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts)


def spec_errors(exc: ValidationError) -> list[tuple[str, str]]:
    found = []
    for e in exc.errors():
        path, msg = error_path(e["loc"]), e["msg"].removeprefix("Value error, ")
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            path, msg = ".".join(p for p in (path, cause.path) if p), cause.message
        elif e["type"].startswith("union_tag"):
            path = "kind"
        found.append((path, msg))
    return found


def parse_spec(data: Any) -> AnyJob:
    """Validate a decoded spec (dict); raises SpecError naming each bad field."""
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        raise SpecError(spec_errors(exc)) from None


def load_spec(path: str | Path) -> AnyJob:
    """Read a YAML or JSON spec file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SpecError([("", f"cannot read {path}: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([("", f"{path} is not valid YAML: {exc}")]) from None
    return parse_spec(data)


def spec_json_schema() -> dict:
    return _adapter.json_schema()


def dump_spec(spec: AnyJob) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True)
