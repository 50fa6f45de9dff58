"""A shared-memory cache of rendered items, filled lazily by whichever process needs one first.

DataLoader workers are forked afresh each epoch (unless persistent), so a cache inside a
worker would be lost at the end of every epoch. Tensors in shared memory are inherited by the
workers and written in place, so a scene rendered once serves every later epoch and worker.
Every item has the same shapes, which is what lets the storage be allocated up front; items
past the byte budget are simply not cached.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]


class SharedCache:
    def __init__(self, count: int, spec: Spec, budget_bytes: int):
        per_item = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in spec.values())
        self.capacity = min(count, budget_bytes // per_item)
        self.arrays = {
            key: torch.from_numpy(np.zeros((self.capacity, *shape), dtype=dtype)).share_memory_()
            for key, (shape, dtype) in spec.items()
        } if self.capacity else {}
        self.ready = torch.zeros(self.capacity, dtype=torch.bool).share_memory_()

    def get(self, index: int, make: Callable[[int], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The arrays of item `index`, from the cache or from `make(index)`; treat as read-only."""
        if index < self.capacity and self.ready[index]:
            return {key: array[index].numpy() for key, array in self.arrays.items()}
        item = make(index)
        if index < self.capacity:
            for key, array in self.arrays.items():
                array[index] = torch.from_numpy(np.ascontiguousarray(item[key]))
            # Set last: a reader that sees the flag finds complete arrays (items are
            # deterministic, so two processes racing to fill one slot write the same bytes).
            self.ready[index] = True
        return item
