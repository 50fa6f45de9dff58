"""What a job kind plugs into the trainer: its model, data, loss and export."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from sgmim.data.epochs import EpochDataset
from sgmim.spec import AnyJob
from sgmim.spec.train import DeepSpeedConfig, OptimConfig, ScheduleConfig
from sgmim.train.distributed import DistEnv


class TrainTask(Protocol):
    spec: AnyJob
    env: DistEnv
    data_workers: int

    @property
    def optim(self) -> OptimConfig: ...

    @property
    def schedule(self) -> ScheduleConfig: ...

    @property
    def deepspeed(self) -> DeepSpeedConfig: ...

    def build_model(self) -> nn.Module: ...

    def build_dataset(self, model: nn.Module) -> EpochDataset:
        """Items keyed by `(epoch, index)`: the trainer reads the whole run in one pass."""

    def param_groups(self, model: nn.Module) -> list[dict]: ...

    def forward(self, engine, batch: dict) -> dict[str, torch.Tensor]:
        """One micro-batch: named scalar tensors, `loss` the one to minimise."""

    def export(self, state_dict: dict[str, torch.Tensor], run_dir: Path, step: int) -> None:
        """Rank 0, after the final checkpoint: write `export/` from the consolidated fp32 weights."""

    def after_training(self, engine, run_dir: Path) -> None:
        """Every rank, after the export (fine-tuning evaluates its validation split here)."""

    # Optional: `before_training(engine, metrics: MetricsWriter)`, called on every rank before the
    # first step of a fresh (not resumed) run; fine-tuning logs its step-0 validation there.
