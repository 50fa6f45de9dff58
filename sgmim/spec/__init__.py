"""The job spec: one pydantic schema shared by the API, the worker, the trainer and the CLI.

Torch-free: the API and the worker import it without the ML stack. The sections live in
modules of their own (`model`, `data`, `train`, `downstream`, `job`); the names callers use are
here.
"""

from sgmim.spec.base import FieldError, StrictModel
from sgmim.spec.data import (
    AugmentConfig,
    DownstreamDataConfig,
    PretrainDataConfig,
    PseudoDepthConfig,
    SceneFile,
    SceneGeometryConfig,
    SyntheticConfig,
)
from sgmim.spec.downstream import (
    TASK_HEADS,
    EvalOptions,
    EvaluateConfig,
    FinetuneConfig,
    FinetuneEncoderConfig,
    HeadConfig,
)
from sgmim.spec.job import (
    REQUIRED_PARENT_KIND,
    AnyJob,
    EvaluateJob,
    FinetuneJob,
    JobKind,
    JobSpec,
    ParentRef,
    PretrainConfig,
    PretrainJob,
    Resources,
    SpecError,
    apply_overrides,
    dump_spec,
    error_path,
    load_spec,
    parse_section,
    parse_spec,
    read_spec_data,
    spec_errors,
    spec_json_schema,
)
from sgmim.spec.model import EncoderConfig, GuidanceConfig, LossConfig, MaskConfig, ModelConfig
from sgmim.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig

__all__ = [
    "REQUIRED_PARENT_KIND", "TASK_HEADS", "AnyJob", "AugmentConfig", "DeepSpeedConfig",
    "DownstreamDataConfig", "EncoderConfig", "EvalOptions", "EvaluateConfig", "EvaluateJob",
    "FieldError", "FinetuneConfig", "FinetuneEncoderConfig", "FinetuneJob", "GuidanceConfig",
    "HeadConfig", "JobKind", "JobSpec", "LossConfig", "MaskConfig", "ModelConfig", "OptimConfig",
    "ParentRef", "PretrainConfig", "PretrainDataConfig", "PretrainJob", "PseudoDepthConfig",
    "SceneFile", "SceneGeometryConfig",
    "Resources", "ScheduleConfig", "SpecError", "StrictModel", "SyntheticConfig", "apply_overrides",
    "dump_spec", "error_path", "load_spec", "parse_section", "parse_spec", "read_spec_data", "spec_errors",
    "spec_json_schema",
]
