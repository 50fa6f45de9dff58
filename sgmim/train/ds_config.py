"""The DeepSpeed config, rendered from the job spec (written to `ds_config.json` in the run dir).

Precision has one path: DeepSpeed's `torch_autocast` (fp32 master weights, bf16/fp16 compute, a
grad scaler for fp16). DeepSpeed's full-bf16 mode casts the whole model, which breaks timm's
Swin attention (its fp32 mask buffer meets bf16 activations).
"""

from __future__ import annotations

from sgmim.spec.train import DeepSpeedConfig, ScheduleConfig
from sgmim.train.distributed import DistEnv


class PrecisionError(ValueError):
    pass


def resolve_precision(requested: str, on_gpu: bool) -> str:
    if requested == "auto":
        return "bf16" if on_gpu else "fp32"
    if requested == "fp16" and not on_gpu:
        raise PrecisionError("deepspeed.precision fp16 needs a GPU; use bf16 or fp32 on the CPU")
    return requested


def trainer_clips(zero_stage: int, precision: str) -> bool:
    """Whether the trainer clips the gradients itself (`Trainer._norm_and_clip`) instead of
    DeepSpeed: at stage 0, where DeepSpeed's clipping waits for the device twice a step, unless
    fp16's loss scaler must unscale the gradients first (DeepSpeed does that inside its step)."""
    return zero_stage == 0 and precision != "fp16"


def build_ds_config(ds: DeepSpeedConfig, schedule: ScheduleConfig, clip_grad: float | None,
                    env: DistEnv, load_universal: bool = False, zero_stage: int | None = None) -> dict:
    """`zero_stage`: the stage chosen for this run (default: the spec's, resolved)."""
    precision = resolve_precision(ds.precision, env.on_gpu)
    stage = ds.resolved_zero_stage(env.world_size) if zero_stage is None else zero_stage
    zero: dict = {"stage": stage}
    config = {
        "train_micro_batch_size_per_gpu": schedule.batch_size,
        "gradient_accumulation_steps": schedule.accumulation,
        "train_batch_size": schedule.batch_size * schedule.accumulation * env.world_size,
        "zero_optimization": zero,
        "gradient_clipping": 0.0 if trainer_clips(stage, precision) else (clip_grad or 0.0),
        "steps_per_print": 2 ** 31 - 1,  # the trainer logs its own metrics
        # The trainer measures its own throughput; DeepSpeed's timer would synchronise the
        # device at the start and the end of every step.
        "timers": {"throughput": {"enabled": False}},
        "torch_autocast": {"enabled": precision != "fp32",
                           "dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")},
        "checkpoint": {"load_universal": load_universal},
    }
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": env.on_gpu}
        # The client optimiser is torch's AdamW on the offloaded fp32 copies; DeepSpeed's CPUAdam
        # would be a JIT-compiled op build on every fresh machine.
        config["zero_force_ds_cpu_optimizer"] = False
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": env.on_gpu}
    return config
