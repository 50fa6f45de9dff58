"""The job spec: `{kind, name, config, parent, resources, priority, max_restarts}`; `kind` picks
the schema of `config`. Unknown keys are rejected everywhere and every error names its field path.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, WithJsonSchema, model_validator

from sgmim.spec.base import FieldError, StrictModel
from sgmim.spec.data import PretrainDataConfig
from sgmim.spec.downstream import EvaluateConfig, FinetuneConfig
from sgmim.spec.model import ModelConfig
from sgmim.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig

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


TAG_PATTERN = r"^[A-Za-z0-9_.:+-]{1,64}$"
Tag = Annotated[str, Field(pattern=TAG_PATTERN, description="letters, digits and _ . : + -")]
# no control characters (terminal escapes, newlines) nor bidi overrides: names are printed
PRINTABLE_NAME = r"^[^\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]+$"


class JobBase(StrictModel):
    name: str = Field(min_length=1, max_length=128, pattern=PRINTABLE_NAME,
                      description="free text without control characters")
    parent: ParentRef | None = None
    resources: Resources = Resources()
    priority: int = Field(5, ge=0, le=9, description="9 runs first")
    max_restarts: int = Field(2, ge=0, le=20)
    tags: list[Tag] = Field(default_factory=list, max_length=32,
                            description="labels to find the job by (`sgmim jobs --tag`)")
    note: str | None = Field(None, max_length=4096, description="free-form notes on the experiment")
    webhook: str | None = Field(
        None, max_length=2048, pattern=r"^https?://\S+$",
        description="POSTed a signed JSON body when the job reaches a terminal state")


class PretrainJob(JobBase):
    kind: Literal["pretrain"]
    # the schema states what _no_parent checks (the check keeps its clearer message)
    parent: Annotated[ParentRef | None, WithJsonSchema({"type": "null", "default": None})] = None
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
Section = TypeVar("Section", bound=BaseModel)


# The error type of a rule a validator checks (across fields, or beyond what JSON Schema can
# say, e.g. img_size a multiple of mask_patch_size); everything else is a schema violation.
SPEC_RULE = "spec_rule"


class SpecError(ValueError):
    """A job spec that does not validate; `errors` are `(field path, message)` pairs and
    `types` their kinds ("spec_rule", or pydantic's type of a schema violation)."""

    def __init__(self, errors: list[tuple[str, str]], types: list[str] | None = None):
        self.errors = errors
        self.types = types or ["value_error"] * len(errors)
        super().__init__("; ".join(f"{path}: {msg}" if path else msg for path, msg in errors))


class SpecLoader(yaml.SafeLoader):
    """YAML as people (and json.dumps) write numbers: PyYAML follows YAML 1.1, where `1e-6` and
    `1e-06` (no dot) are strings, which the strict schema would refuse."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# The label pydantic gives each member of a union field (`compile: Literal["auto"] | bool`):
# part of its location, but not a field the user wrote.
_UNION_MEMBER = re.compile(r"^(bool|int|float|str|none|(literal|list|tuple|dict|function-\w+)\[.*\])$")


def error_path(loc: tuple[Any, ...]) -> str:
    """pydantic's location without the union tags: ('pretrain', 'config', 'optim', 'base_lr')
    → 'config.optim.base_lr'; ('pretrain', 'config', 'deepspeed', 'compile', 'bool') →
    'config.deepspeed.compile'."""
    parts = list(loc)
    if parts and parts[0] in ("pretrain", "finetune", "evaluate"):
        parts = parts[1:]
    return ".".join(str(p) for p in parts if not (isinstance(p, str) and _UNION_MEMBER.match(p)))


_JOB_MODELS: dict[str, type[BaseModel]] = {"pretrain": PretrainJob, "finetune": FinetuneJob,
                                           "evaluate": EvaluateJob}


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X | None`, `Annotated[X, ...]`, `list[X]`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _submodel(arg)) is not None:
            return found
    return None


def allowed_keys(loc: tuple[Any, ...], root: type[BaseModel] | None = None) -> list[str]:
    """The keys the model holding `loc`'s last part accepts ([] when it cannot be told); `loc`
    starts at `root`, or with the job kind when `root` is None."""
    parts = list(loc)
    model = root
    if model is None and parts:
        model = _JOB_MODELS.get(str(parts.pop(0)))
    for part in parts[:-1]:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        model = _submodel(info.annotation) if info is not None else None
    return list(model.model_fields) if model is not None else []


def _did_you_mean(loc: tuple[Any, ...], root: type[BaseModel] | None) -> str:
    """`extra_forbidden`'s message, with the closest allowed key when one is close."""
    close = difflib.get_close_matches(str(loc[-1]), allowed_keys(loc, root), n=1, cutoff=0.6)
    return f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"


def spec_errors(exc: ValidationError) -> list[tuple[str, str]]:
    return [(path, msg) for path, msg, _ in _spec_error_items(exc)]


def _spec_error_items(exc: ValidationError,
                      root: type[BaseModel] | None = None) -> list[tuple[str, str, str]]:
    """(field path, message, error type) per field: a union field's members each report an
    error at the same path, merged into one ("Input should be 'auto' or: Input should be a
    valid boolean")."""
    merged: dict[str, tuple[str, str]] = {}
    for path, msg, kind in _raw_error_items(exc, root):
        if path in merged:
            msg = f"{merged[path][0]} or: {msg}"
            kind = merged[path][1]
        merged[path] = (msg, kind)
    return [(path, msg, kind) for path, (msg, kind) in merged.items()]


def _raw_error_items(exc: ValidationError, root: type[BaseModel] | None) -> list[tuple[str, str, str]]:
    found = []
    for e in exc.errors():
        path, msg = error_path(e["loc"]), e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _did_you_mean(e["loc"], root)
        cause = e.get("ctx", {}).get("error")
        if isinstance(cause, FieldError):
            path, msg = ".".join(p for p in (path, cause.path) if p), cause.message
        elif e["type"].startswith("union_tag"):
            path = "kind"
        found.append((path, msg, SPEC_RULE if e["type"] == "value_error" else e["type"]))
    return found


def _spec_error(exc: ValidationError, root: type[BaseModel] | None = None) -> SpecError:
    items = _spec_error_items(exc, root)
    return SpecError([(path, msg) for path, msg, _ in items], [kind for _, _, kind in items])


def parse_spec(data: Any) -> AnyJob:
    """Validate a decoded spec (dict); raises SpecError naming each bad field."""
    try:
        return _adapter.validate_python(data)
    except ValidationError as exc:
        raise _spec_error(exc) from None


def parse_section(model: type[Section], data: Any) -> Section:
    """Validate a decoded part of a spec (e.g. a `synthetic:` block) as `model`; raises SpecError
    with the messages a whole spec's fields get, paths starting at `model`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _spec_error(exc, model) from None


def load_spec(path: str | Path, overrides: list[str] | None = None) -> AnyJob:
    """Read a YAML or JSON spec file, apply `--set` overrides, validate."""
    return parse_spec(apply_overrides(read_spec_data(path), overrides or []))


def spec_json_schema() -> dict:
    return _adapter.json_schema()


def dump_spec(spec: AnyJob) -> str:
    return json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True)


def apply_overrides(data: dict, assignments: list[str], root: type[BaseModel] | None = None) -> dict:
    """`key.path=value` assignments (values parsed as YAML) applied to a decoded spec, e.g.
    `config.schedule.steps=100` or `config.model.guidance.enabled=false`; see `set_path`."""
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise SpecError([("", f"--set {assignment!r}: expected key.path=value")])
        try:
            value = yaml.load(raw, Loader=SpecLoader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            raise SpecError([("", f"--set {assignment!r}: not valid YAML: {yaml_problem(exc)}")]) from None
        set_path(data, key.strip(), value, root, what=f"--set {assignment!r}")
    return data


def set_path(data: dict, key: str, value: Any, root: type[BaseModel] | None = None,
             what: str | None = None) -> None:
    """Set the dotted `key` of a decoded spec to `value`. `root`: the model `data` is (default:
    the job model of its `kind`). A section missing on the way starts from that model's own
    default for it, not from an empty one: a pretrain job's schedule is `epochs: 100` and a
    fine-tuning job's optimiser its own, so `config.schedule.seed=3` or `config.optim.base_lr=…`
    on a spec without those sections changes that one value. Setting one of two settings
    that exclude each other (a schedule's `epochs` and `steps`) drops the other."""
    model = root if root is not None else _JOB_MODELS.get(str(data.get("kind")))
    node = data
    *parents, leaf = key.split(".")
    for part in parents:
        field = model.model_fields.get(part) if model is not None else None
        child = node.get(part)
        if child is None:
            child = node[part] = _section_default(field)
        if not isinstance(child, dict):
            raise SpecError([(key, f"{what or key}: {part} is not a mapping")])
        node, model = child, _submodel(field.annotation) if field is not None else None
    node[leaf] = value
    if value is not None and model is not None:
        for other in getattr(model, "EXCLUSIVE", {}).get(leaf, ()):
            node.pop(other, None)


def _section_default(field: Any) -> dict:
    """The settings a model field's default section sets itself (`{}` without one)."""
    default = field.get_default(call_default_factory=True) if field is not None else None
    return default.model_dump(mode="json", exclude_unset=True) if isinstance(default, BaseModel) else {}


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line (its own message spans several, with a caret under the spot)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def read_spec_data(path: str | Path, what: str = "a job spec") -> dict:
    """A spec file (or a file of `what`, a part of one) decoded but not validated, so that
    overrides can apply first."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(), Loader=SpecLoader)  # noqa: S506 (a SafeLoader)
    except OSError as exc:
        raise SpecError([("", f"cannot read {path}: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([("", f"{path} is not valid YAML: {yaml_problem(exc)}")]) from None
    if not isinstance(data, dict):
        raise SpecError([("", f"{path} does not hold a mapping ({what})")])
    return data
