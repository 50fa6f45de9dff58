"""Datasets whose items depend on the epoch (augmentation, masks), read in one DataLoader pass
over the whole run.

A sampler that spans epochs yields `(epoch, index)` keys, so each item carries its own epoch and
no worker has to be told when an epoch ends. An int key uses the epoch set by `set_epoch`
(evaluation, tests, any plain sampler)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

EpochKey = tuple[int, int]   # (epoch, index)


class EpochDataset(Dataset):
    def __init__(self) -> None:
        # In shared memory so that DataLoader workers already started see set_epoch too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """The epoch of int keys: its augmentation and masks."""
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def epoch_and_index(self, key: int | EpochKey) -> EpochKey:
        if isinstance(key, tuple):
            epoch, index = key
            return int(epoch), int(index)
        return self.epoch, int(key)
