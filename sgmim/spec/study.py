"""The study spec: the paper's comparisons as a grid of pretrain → fine-tune → evaluate chains.

A study names three base job specs (inline, or files relative to the study file), the rows to
compare (a list of named variants, and/or axes whose values are crossed) and the seeds. Every
(row, seed) pair is a cell: one chain of three jobs. Keys of `set` and `axes`:

- `method`: `simmim` or `sgmim` (pretraining `config.model.guidance.enabled`);
- `mask.*`, `guidance.*`, `loss.*`, `encoder.*`: the pretraining model section, e.g.
  `mask.structured`, `guidance.extractor`, `loss.lambda_struct`;
- any dotted key of one job, prefixed by the job: `pretrain.config.optim.base_lr`,
  `finetune.config.schedule.steps`, `evaluate.config.split`.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from sgmim.spec.base import StrictModel
from sgmim.spec.job import SPEC_RULE, SpecError, read_spec_data, set_path

STAGES = ("pretrain", "finetune", "evaluate")
METHODS = {"simmim": False, "sgmim": True}  # method → pretraining guidance.enabled
MODEL_SECTIONS = ("mask", "guidance", "loss", "encoder")
STUDY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class JobFile(StrictModel):
    """A base job spec kept in a file, with changes on top."""

    file: str = Field(min_length=1, description="path of a job spec, relative to the study file")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted key → value, applied to the file")


class Variant(StrictModel):
    """A named row: a set of changes to the base jobs."""

    name: str = Field(min_length=1, max_length=64)
    set: dict[str, Any] = Field(default_factory=dict, description="study key → value (see the module doc)")

    @field_validator("set")
    @classmethod
    def _check_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key, item in value.items():
            check_study_key(key, item)
        return value


class StudySpec(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=STUDY_NAME,
                      description="names the jobs and the default output folder runs/studies/<name>")
    description: str | None = None
    pretrain: str | JobFile | dict[str, Any] = Field(
        description="the base pretraining job: a spec file path, {file, set}, or an inline spec")
    finetune: str | JobFile | dict[str, Any] = Field(
        description="the base fine-tuning job; its parent is the cell's pretraining job")
    evaluate: str | JobFile | dict[str, Any] = Field(
        description="the base evaluation job; its parent is the cell's fine-tuning job")
    variants: list[Variant] = Field(default_factory=list, description="named rows (crossed with axes)")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="study key → values; every combination is a row")
    seeds: list[int] = Field([0], min_length=1, max_length=100, description="one chain per row and seed")
    seed_keys: list[str] = Field(
        ["pretrain.config.schedule.seed", "finetune.config.schedule.seed"], min_length=1,
        description="job keys set to the cell's seed (model init, data order)")
    baseline: str | None = Field(None, description="the row the others are compared with "
                                                   "(default: the first row)")
    metrics: list[str] = Field(["rmse", "abs_rel", "delta1"], min_length=1,
                               description="keys of the evaluation's metrics to tabulate")

    @field_validator("axes")
    @classmethod
    def _check_axes(cls, value: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, items in value.items():
            if not items:
                raise ValueError(f"axis {key}: give at least one value")
            for item in items:
                check_study_key(key, item)
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(s < 0 for s in value):
            raise ValueError("seeds must be distinct non-negative integers")
        return value

    @field_validator("seed_keys")
    @classmethod
    def _check_seed_keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if key.split(".", 1)[0] not in STAGES:
                raise ValueError(f"seed key {key}: must start with pretrain., finetune. or evaluate.")
        return value

    @model_validator(mode="after")
    def _check_rows(self) -> StudySpec:
        labels = [row.label for row in self.rows()]
        if len(set(labels)) != len(labels):
            raise ValueError(f"rows must differ: {labels}")
        if self.baseline is not None and self.baseline not in labels:
            raise ValueError(f"baseline {self.baseline!r} is not a row; rows: {', '.join(labels)}")
        return self

    def rows(self) -> list[Row]:
        """Variants × the product of the axes, in the order given."""
        variants = self.variants or [Variant(name="base")]
        keys = list(self.axes)
        rows = []
        for variant, values in itertools.product(variants, itertools.product(*self.axes.values())):
            picked = dict(zip(keys, values, strict=True))
            parts = ([variant.name] if self.variants else []) + [_axis_label(k, v) for k, v in picked.items()]
            rows.append(Row(label=", ".join(parts) or "base", changes={**variant.set, **picked}))
        return rows

    def baseline_label(self) -> str:
        return self.baseline or self.rows()[0].label


class Row(StrictModel):
    label: str
    changes: dict[str, Any]


def _axis_label(key: str, value: Any) -> str:
    return str(value) if key == "method" else f"{key}={value}"


def check_study_key(key: str, value: Any) -> None:
    if key == "method":
        if value not in METHODS:
            raise ValueError(f"method: {value!r} is not one of {', '.join(METHODS)}")
        return
    head = key.split(".", 1)[0]
    if "." not in key or head not in (*MODEL_SECTIONS, *STAGES):
        raise ValueError(f"key {key!r}: use method, {'.*, '.join(MODEL_SECTIONS)}.* or a dotted "
                         "key starting with pretrain., finetune. or evaluate.")


def job_key(key: str) -> tuple[str, str]:
    """A study key as (stage, dotted key inside that job's spec)."""
    if key == "method":
        return "pretrain", "config.model.guidance.enabled"
    head, rest = key.split(".", 1)
    if head in MODEL_SECTIONS:
        return "pretrain", f"config.model.{key}"
    return head, rest


def set_key(spec: dict, dotted: str, value: Any) -> None:
    """A study key's decoded value into a job spec (`set_path`: no YAML parsing of a string)."""
    set_path(spec, dotted, copy.deepcopy(value))


def load_study(path: str | Path) -> tuple[StudySpec, dict[str, dict]]:
    """Read and validate a study file; returns the spec and the three base jobs, decoded."""
    path = Path(path)
    return parse_study(read_spec_data(path), path.parent)


def parse_study(data: Any, folder: Path | None) -> tuple[StudySpec, dict[str, dict]]:
    """Validate a decoded study; base jobs named by file are read relative to `folder`. Without
    a folder (a study posted to the service) every base job must be inline: the server does not
    read the client's files. Raises SpecError naming each bad field."""
    if not isinstance(data, dict):
        raise SpecError([("", "a study must be a mapping (a JSON object) with name, pretrain, finetune, "
                              "evaluate, ...")], ["model_type"])
    try:
        study = StudySpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a rule of a validator (distinct seeds, known keys, ...) is a spec rule, as in job specs
        raise SpecError([(".".join(str(p) for p in e["loc"]), e["msg"].removeprefix("Value error, "))
                         for e in errors],
                        [SPEC_RULE if e["type"] == "value_error" else e["type"] for e in errors]) from None
    bases = {stage: _base_job(getattr(study, stage), folder, stage) for stage in STAGES}
    return study, bases


def inline_study(study: StudySpec, bases: dict[str, dict]) -> dict:
    """The study with its base jobs inline: what a file-based study becomes to be posted."""
    return {**study.model_dump(mode="json", exclude_none=True), **copy.deepcopy(bases)}


def _base_job(ref: str | JobFile | dict[str, Any], folder: Path | None, stage: str) -> dict:
    if isinstance(ref, dict):
        data = copy.deepcopy(ref)
    elif folder is None:
        raise SpecError([(stage, "give the base job inline (a job spec mapping): the service does "
                                 "not read files named by a posted study")], [SPEC_RULE])
    else:
        file = ref if isinstance(ref, str) else ref.file
        data = read_spec_data(folder / file)
        if isinstance(ref, JobFile):
            for key, value in ref.set.items():
                set_key(data, key, value)
    if data.get("kind") != stage:
        raise SpecError([(stage, f"the base {stage} job must have kind: {stage}, not {data.get('kind')!r}")],
                        [SPEC_RULE])
    return data
