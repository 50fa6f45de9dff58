"""A distributed sampler that can start mid-epoch, so a resumed run continues at the same
position in the same data order."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    """Epoch `e` is a permutation seeded by (seed, e); rank r takes every world-th index of it,
    truncated so that every rank has the same count. `set_epoch(e, skip)` drops the first
    `skip` indices of this rank's share (the samples the interrupted run already consumed)."""

    def __init__(self, num_samples: int, rank: int, world_size: int, seed: int, shuffle: bool = True):
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.per_rank = num_samples // world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        order = np.arange(self.num_samples)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        mine = order[self.rank::self.world_size][: self.per_rank]
        return iter(mine[self.skip:].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.skip
