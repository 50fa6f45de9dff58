"""The optimisation, schedule and DeepSpeed sections of the job spec."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from sgmim.spec.base import MAX_EPOCHS, MAX_SEED, MAX_STEPS, FloatPair, StrictModel


class OptimConfig(StrictModel):
    """AdamW with the linear scaling rule: lr = base_lr · total_batch / lr_reference_batch."""

    base_lr: float = Field(2e-4, gt=0.0, le=10.0)
    warmup_lr: float = Field(1e-6, ge=0.0, description="scaled like base_lr")
    min_lr: float = Field(1e-5, ge=0.0, description="scaled like base_lr")
    lr_reference_batch: int = Field(512, ge=1, le=1_048_576)
    betas: FloatPair = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    schedule: Literal["cosine", "step", "poly"] = "cosine"
    warmup_epochs: float = Field(10.0, ge=0.0, le=MAX_EPOCHS)
    warmup_prefix: bool = Field(
        False, description="cosine only: false (SimMIM's timm CosineLRScheduler) runs the cosine over "
                           "all steps from step 0, the linear warm-up replacing its first steps; true "
                           "starts the cosine at the end of the warm-up")
    step_milestones: list[float] = Field(
        default_factory=list, description="step schedule: epochs at which lr is multiplied by step_gamma")
    step_gamma: float = Field(0.1, gt=0.0, le=1.0)
    poly_power: float = Field(0.9, gt=0.0)
    clip_grad: float | None = Field(5.0, gt=0.0)
    layer_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="fine-tuning: layer-wise lr decay (None = off)")


class ScheduleConfig(StrictModel):
    """How long and in what chunks; exactly one of epochs and steps."""

    # an override of one length replaces the other (`--set config.schedule.steps=50` on a spec
    # of epochs), see sgmim.spec.job.set_path
    EXCLUSIVE: ClassVar[dict[str, tuple[str, ...]]] = {"epochs": ("steps",), "steps": ("epochs",)}

    batch_size: int = Field(64, ge=1, le=65536, description="per process, per micro-step")
    accumulation: int = Field(1, ge=1, le=1024)
    epochs: float | None = Field(None, gt=0, le=MAX_EPOCHS)
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="optimiser steps")
    log_every: int = Field(10, ge=1, le=MAX_STEPS, description="steps between metric lines")
    checkpoint_every: int | None = Field(None, ge=1, le=MAX_STEPS, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, ge=1, le=100)
    seed: int = Field(0, ge=0, le=MAX_SEED)

    @model_validator(mode="after")
    def _one_length(self) -> ScheduleConfig:
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("set exactly one of epochs and steps")
        return self


class DeepSpeedConfig(StrictModel):
    zero_stage: Literal["auto", 0, 1, 2, 3] = Field(
        "auto", description="auto: 0 with one process (nothing to shard; partitioning only costs "
                            "time), 2 with several; a resumed run keeps its checkpoint's stage")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on GPU, fp32 on CPU")
    offload_optimizer: bool = False
    offload_params: bool = Field(False, description="ZeRO-3 only")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the model; auto: on GPU yes, on the CPU no")
    compile_scope: Literal["blocks", "model"] = Field(
        "blocks", description="blocks: compile each repeated transformer block (and the fusion "
                              "block) on its own, so compile time stays bounded and blocks of one "
                              "shape share their code; model: the whole model (engine.compile)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile's mode. reduce-overhead: replay each compiled "
                               "region as a CUDA graph, one launch instead of one per kernel "
                               "(GPU only; more memory); max-autotune-no-cudagraphs: search "
                               "faster matmul kernels (minutes more compile)")

    @field_validator("zero_stage", mode="before")
    @classmethod
    def _stage_not_boolean(cls, value: object) -> object:
        """pydantic matches the literals 0 and 1 by equality, which false and true pass."""
        if isinstance(value, bool):
            raise PydanticCustomError("literal_error", "Input should be 'auto', 0, 1, 2 or 3")
        return value

    @model_validator(mode="after")
    def _check_offload(self) -> DeepSpeedConfig:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self

    def resolved_zero_stage(self, world_size: int) -> int:
        """The stage a fresh run uses (a resumed run may keep its checkpoint's, see the trainer)."""
        if self.zero_stage != "auto":
            return self.zero_stage
        return 2 if world_size > 1 or self.offload_optimizer else 0

    def resolved_compile(self, on_gpu: bool) -> bool:
        return on_gpu if self.compile == "auto" else self.compile
