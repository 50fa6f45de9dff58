"""Epoch boundaries: one DataLoader pass over the whole run against a pass per epoch (issue 13).

    .venv/bin/python benchmarks/epoch_bench.py [--rounds 5] [--epochs 8] [--steps 8] [--batch 32]

A new pass restarts the workers' prefetching even when the workers persist, so each epoch
starts with the consumer waiting for one worker to make a whole batch. The consumer here is a
simulated device step: a sleep of the loader's own time per batch / 0.75, so the loader keeps
up with it (as on the GPU check, where 12 workers deliver ~1.3x what the step takes) and every
wait shows. The pretraining dataset is the trainer's (tiny spec, synthetic scenes, cached
before timing), with one loader worker; alternating round by round:

- per epoch: persistent workers, `set_epoch(e)` and a new pass each epoch (the trainer before);
- one pass: `RunSampler`'s `(epoch, index)` keys over every epoch (the trainer now).

Reports images/s of each as a fraction of the simulated device's rate (median of the rounds,
with min and max) and the wait at each epoch start, and writes the "Epoch boundaries (CPU)"
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import machine, today, write_section  # noqa: E402
from sgmim.caches import use_cache_root  # noqa: E402
from sgmim.data import build_pretrain_dataset  # noqa: E402
from sgmim.models import MaskGenerator  # noqa: E402
from sgmim.spec import PretrainDataConfig  # noqa: E402
from sgmim.train.sampler import RunSampler  # noqa: E402

SIZE, SEED = 64, 0
DEVICE_SHARE = 0.75   # the loader's time per batch / the simulated step's


def dataset_for(images: int):
    cfg = PretrainDataConfig(num_images=images, seed=SEED, transfer="float32")
    return build_pretrain_dataset(cfg, SIZE, MaskGenerator(SIZE, 32, 4, 0.6))


def per_epoch(dataset, args, step_s: float) -> tuple[float, list[float]]:
    """Seconds for the run and the wait for each epoch's first batch, a pass per epoch."""
    keys = RunSampler(len(dataset), 0, 1, SEED, args.steps, args.batch, 0, args.steps)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=[i for _, i in keys], num_workers=1,
                        drop_last=True, persistent_workers=True)
    waits = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        dataset.set_epoch(epoch)
        asked = time.perf_counter()
        for step, _ in enumerate(loader):
            if step == 0:
                waits.append(time.perf_counter() - asked)
            time.sleep(step_s)
    return time.perf_counter() - start, waits


def one_pass(dataset, args, step_s: float) -> float:
    """Seconds for the run read in one pass of (epoch, index) keys."""
    total = args.epochs * args.steps
    keys = RunSampler(len(dataset), 0, 1, SEED, args.steps, args.batch, 0, total)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=keys, num_workers=1, drop_last=True)
    start = time.perf_counter()
    for _ in loader:
        time.sleep(step_s)
    return time.perf_counter() - start


def loader_seconds_per_batch(dataset, args) -> float:
    """The loader alone, one worker, after a pass that caches the scenes."""
    loader = DataLoader(dataset, batch_size=args.batch, num_workers=1, drop_last=True,
                        persistent_workers=True)
    for _ in loader:
        pass
    start = time.perf_counter()
    batches = sum(1 for _ in loader)
    return (time.perf_counter() - start) / batches


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="steps per epoch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        use_cache_root(Path(tmp))
        dataset = dataset_for(args.steps * args.batch)
        step_s = loader_seconds_per_batch(dataset, args) / DEVICE_SHARE
        device_rate = args.batch / step_s
        images = args.epochs * args.steps * args.batch
        rates: dict[str, list[float]] = {"per epoch": [], "one pass": []}
        waits: list[float] = []
        for _ in range(args.rounds):
            seconds, epoch_waits = per_epoch(dataset, args, step_s)
            rates["per epoch"].append(images / seconds)
            waits += epoch_waits[1:]   # the first epoch waits for the worker to start in both
            rates["one pass"].append(images / one_pass(dataset, args, step_s))
    load_after = os.getloadavg()
    shares = {name: [r / device_rate for r in v] for name, v in rates.items()}
    lines = [f"{name}: {spread(rates[name], ',.1f')} img/s, {spread(shares[name], '.3f')} of the "
             f"device's {device_rate:,.1f}" for name in rates]
    lines.append(f"wait at an epoch start, a pass per epoch: {spread([w * 1e3 for w in waits], '.0f')} ms")
    print("\n".join(lines))
    if args.no_results:
        return 0

    def row(label: str, name: str) -> str:
        return f"| {label} | {spread(rates[name], ',.1f')} | {spread(shares[name], '.3f')} |"

    body = f"""Issue 13. {today()}, {machine()}, load {load[0]:.1f} before, {load_after[0]:.1f} after.
Command: `.venv/bin/python benchmarks/epoch_bench.py --rounds {args.rounds}` ({args.epochs} epochs
of {args.steps} steps, batch {args.batch}, one loader worker, the pretraining dataset of the tiny
spec at {SIZE} px, scenes cached; the device step simulated by a sleep of {step_s * 1e3:.0f} ms, the
loader's time per batch / {DEVICE_SHARE}). Median of the rounds (min–max):

| loader | img/s | of the simulated device's rate |
|---|---|---|
{row('a pass per epoch (persistent workers; the trainer before 2026-12-02)', 'per epoch')}
{row('one pass of `(epoch, index)` keys (`RunSampler`; the trainer now)', 'one pass')}

A pass per epoch waits {spread([w * 1e3 for w in waits], '.0f')} ms for each epoch's first batch
(epochs 2 on): one worker making a whole batch while the device idles. On the H200 check (12
workers, batch 128, 32 steps per epoch) that wait is up to the time one worker takes for a batch
(128 images at a twelfth of the loader's 2,330–2,990 img/s: about half a second) against an
epoch of 2.4 s at 1,708 img/s; the next GPU check measures what is left.
Both rows include the worker's start before the first batch, which keeps one pass under 1.
"""
    write_section("Epoch boundaries (CPU)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
