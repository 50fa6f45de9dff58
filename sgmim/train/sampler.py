"""The sampler of a whole run: one DataLoader pass over every epoch, able to start at any
step, so a resumed run continues at the same position in the same data order.

One pass instead of one per epoch: a new pass restarts the workers' prefetching, and each
epoch would then begin with the device waiting for a worker to make a whole batch."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from sgmim.data.epochs import EpochKey


class RunSampler(Sampler[EpochKey]):
    """Yields `(epoch, index)` keys from `start_step` to `total_steps`.

    Epoch `e` is a permutation seeded by (seed, e); rank r takes every world-th index of it and
    uses the first `steps_per_epoch × samples_per_step` (the same count on every rank)."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int,
                 steps_per_epoch: int, samples_per_step: int, start_step: int, total_steps: int):
        self.num_samples, self.rank, self.world_size, self.seed = num_samples, rank, world_size, seed
        self.steps_per_epoch, self.samples_per_step = steps_per_epoch, samples_per_step
        self.start_step, self.total_steps = start_step, total_steps
        self.per_epoch = steps_per_epoch * samples_per_step
        share = num_samples // world_size
        if self.per_epoch > share:
            raise ValueError(f"an epoch of {steps_per_epoch} steps × {samples_per_step} samples "
                             f"needs more than the {share} samples of one rank's share")

    def epoch_share(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
        return order[self.rank::self.world_size][: self.per_epoch]

    def __iter__(self) -> Iterator[EpochKey]:
        epoch, step_in_epoch = divmod(self.start_step, self.steps_per_epoch)
        skip = step_in_epoch * self.samples_per_step
        remaining = len(self)
        while remaining > 0:
            share = self.epoch_share(epoch)[skip: skip + remaining]
            for index in share.tolist():
                yield epoch, index
            remaining -= len(share)
            epoch, skip = epoch + 1, 0

    def __len__(self) -> int:
        return max(self.total_steps - self.start_step, 0) * self.samples_per_step
