"""Parameter groups (weight-decay exemptions, layer-wise LR decay) and the LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from sgmim.spec.train import OptimConfig


def param_groups(model: nn.Module, weight_decay: float, no_decay: set[str],
                 layer_scale: Callable[[str], float] | None = None) -> list[dict]:
    """Groups by (decay or not, LR scale). Each group carries `lr_scale`, which the schedule
    multiplies into its LR (layer-wise decay for fine-tuning; 1.0 otherwise)."""
    groups: dict[tuple[bool, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = name not in no_decay
        scale = layer_scale(name) if layer_scale else 1.0
        group = groups.setdefault((decay, scale), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale})
        group["params"].append(param)
    return list(groups.values())


@dataclass(frozen=True)
class LRSchedule:
    """LR at each optimiser step: linear warm-up from `warmup_lr`, then cosine, step or poly
    decay towards `min_lr`. All three rates are already scaled by the linear scaling rule.

    The cosine runs over all steps from step 0 and the warm-up replaces its first steps, as
    SimMIM's timm `CosineLRScheduler` (no `warmup_prefix`); with `warmup_prefix` it starts at
    the end of the warm-up instead. Poly always starts at the end of the warm-up."""

    peak_lr: float
    warmup_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    kind: str
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    power: float = 0.9
    warmup_prefix: bool = False

    @classmethod
    def from_config(cls, cfg: OptimConfig, total_batch: int, steps_per_epoch: int,
                    total_steps: int) -> LRSchedule:
        scale = total_batch / cfg.lr_reference_batch
        warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
        milestones = tuple(round(m * steps_per_epoch) for m in cfg.step_milestones)
        return cls(cfg.base_lr * scale, cfg.warmup_lr * scale, cfg.min_lr * scale, warmup,
                   total_steps, cfg.schedule, milestones, cfg.step_gamma, cfg.poly_power,
                   cfg.warmup_prefix)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.peak_lr - self.warmup_lr) * step / self.warmup_steps
        if self.kind == "step":
            return self.peak_lr * self.gamma ** sum(step >= m for m in self.milestones)
        start = self.warmup_steps if self.kind == "poly" or self.warmup_prefix else 0
        progress = min((step - start) / max(1, self.total_steps - start), 1.0)
        if self.kind == "cosine":
            shape = 0.5 * (1 + math.cos(math.pi * progress))
        else:  # poly
            shape = (1 - progress) ** self.power
        return self.min_lr + (self.peak_lr - self.min_lr) * shape


class ScheduledLR(torch.optim.lr_scheduler.LRScheduler):
    """Applies an `LRSchedule` to every group, times the group's `lr_scale`. DeepSpeed steps it
    after each optimiser step and saves its state (the step) in checkpoints."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: LRSchedule):
        self.schedule = schedule
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = self.schedule(self.last_epoch)
        return [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count}
