"""Pretraining samples: an image, its structured-knowledge map and the two masks.

Item i of epoch e is a pure function of (cfg.seed, e, i): every random draw (crop, flip,
jitter, masks) comes from one NumPy Generator seeded with that triple, so a resumed run sees
exactly the data the interrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from sgmim.data.epochs import EpochDataset, EpochKey
from sgmim.data.errors import SkipPolicy
from sgmim.data.image_folder import ImageFolderSource
from sgmim.data.synthetic import split_seeds
from sgmim.data.synthetic.source import CachedScenes
from sgmim.data.transforms import SMOOTH, as_unit_float, augment_pair, normalize, to_uint8
from sgmim.spec.data import PretrainDataConfig, Size

MaskFn = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]]


def as_hw(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class PairSource(Protocol):
    def __len__(self) -> int: ...
    def name(self, index: int) -> str: ...
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]: ...


class SyntheticSource(CachedScenes):
    """Procedural scenes of one split; the pseudo-depth is the structured knowledge."""

    def __init__(self, cfg: PretrainDataConfig, size: Size, split: str):
        super().__init__(split_seeds(split, cfg.seed, cfg.num_images), as_hw(size), cfg.synthetic,
                         {"rgb": "rgb", "depth": "pseudo_depth"})

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.get(index)
        return item["rgb"], item["depth"]


class PretrainDataset(EpochDataset):
    """Items: `image` (3, S, S), `depth` (1, S, S) in [0, 1], `image_mask` and `struct_mask`
    (h, w) uint8 on the patch grid (1 = masked).

    `cfg.transfer` compact (auto with a GPU): `image` uint8 pixels and `depth` float16, a quarter
    and a half of the float32 bytes to copy to the device, where the task normalises them.
    float32 (auto without a GPU): `image` ImageNet-normalised float32 and `depth` float32.
    """

    def __init__(self, source: PairSource, cfg: PretrainDataConfig, img_size: int, mask_generator: MaskFn):
        super().__init__()
        self.source = source
        self.cfg = cfg
        self.size = (img_size, img_size)
        self.mask_generator = mask_generator
        self.policy = SkipPolicy(cfg.strict)
        self.compact = cfg.transfer == "compact" or (cfg.transfer == "auto" and torch.cuda.is_available())

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: int | EpochKey) -> dict[str, torch.Tensor]:
        epoch, index = self.epoch_and_index(key)
        rng = np.random.default_rng([self.cfg.seed, epoch, index])
        _, (rgb, depth) = self.policy.load(index, len(self.source), self.source.load)
        # The crop and flip resample uint8 pixels (torch's fast path, and the compact batch's
        # values); jitter and normalisation then work on [0, 1] floats of the crop only.
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        sample = {"image": image, "depth": torch.tensor(depth)[None]}
        sample = augment_pair(sample, {"image": SMOOTH, "depth": SMOOTH}, rng, self.cfg.augment, self.size)
        image_mask, struct_mask = self.mask_generator(rng)
        if self.compact:
            image, depth = to_uint8(sample["image"]), sample["depth"].half()
        else:
            image, depth = normalize(as_unit_float(sample["image"])), sample["depth"]
        return {
            "image": image.contiguous(),
            "depth": depth.contiguous(),
            "image_mask": torch.from_numpy(np.ascontiguousarray(image_mask, dtype=np.uint8)),
            "struct_mask": torch.from_numpy(np.ascontiguousarray(struct_mask, dtype=np.uint8)),
        }


def build_pretrain_dataset(cfg: PretrainDataConfig, img_size: int, mask_generator: MaskFn,
                           split: str = "train") -> PretrainDataset:
    """Pretraining pairs with per-sample masks, keyed by `(epoch, index)` or by an index
    of the epoch set with `set_epoch`.

    `synthetic`: `cfg.num_images` scenes from the split's seed range, rendered at
    `cfg.synthetic.render_size` (default `img_size`). `image_folder`: `root/images` with
    `root/depth` (or `root/<split>/...`).
    """
    if cfg.source == "synthetic":
        source = SyntheticSource(cfg, cfg.synthetic.render_size or img_size, split)
    else:
        source = ImageFolderSource(cfg.root, split, SkipPolicy(cfg.strict), cfg.num_images)
    return PretrainDataset(source, cfg, img_size, mask_generator)
