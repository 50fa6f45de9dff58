"""Rank 0's `metrics.jsonl` and the device-side window of per-step values behind it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class MetricsWriter:
    """Appends one JSON object per line: {"step", "epoch", <name>: value, ..., "time"}.
    Each line is written and flushed whole, so a reader tailing the file never sees half a line
    unless the process dies mid-write (readers skip a last line without its newline)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, step: int, epoch: float | None, **fields: float) -> None:
        """`epoch` None: work without epochs (an evaluation)."""
        if not self.enabled:
            return
        record = {"step": step, "epoch": None if epoch is None else round(epoch, 4), **fields,
                  "time": time.time()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class WindowMeter:
    """Sums named scalars on the device between log lines (no host sync per step) and remembers
    the first step whose loss was not finite."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.steps_seen: set[int] = set()
        self.started = time.perf_counter()

    def add(self, named: dict[str, torch.Tensor], step: int) -> None:
        for name, value in named.items():
            value = value.detach().float()
            self.sums[name] = self.sums.get(name, 0) + value
        self.watch(named["loss"], step)
        self.count += 1
        self.steps_seen.add(step)

    def watch(self, value: torch.Tensor, step: int) -> None:
        """Remember `step` if `value` (a loss, a gradient norm) is not finite; on the device."""
        bad = ~torch.isfinite(value.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)

    def first_nonfinite_step(self) -> int | None:
        flag = self.first_bad.clone()
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            # the smallest bad step over ranks; -1 (none) must not win, so map it to a large value
            flag = torch.where(flag < 0, torch.iinfo(torch.long).max, flag)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            flag = torch.where(flag == torch.iinfo(torch.long).max, -1, flag)
        value = int(flag)
        return None if value < 0 else value

    def means(self) -> tuple[list[str], torch.Tensor]:
        names = sorted(self.sums)
        return names, torch.stack([self.sums[n] for n in names]) / max(self.count, 1)

    def reset(self) -> tuple[int, float]:
        """Clears the window; returns (optimiser steps in it, seconds it lasted)."""
        steps, seconds = len(self.steps_seen), time.perf_counter() - self.started
        self.sums, self.count, self.steps_seen = {}, 0, set()
        self.started = time.perf_counter()
        return steps, seconds
