"""Labelled samples for fine-tuning and evaluation: depth in metres (0 = invalid) or class
labels (255 = ignore).

Training: paired crop (random, or RandomResizedCrop when the augment config resizes) and
flip, photometric jitter on the image only. Evaluation: the whole image as the dataset
defines it (KITTI: the KB crop 352×1216; NYU: 480×640; ADE20K: its own size, batch with
`pad_collate`). Item i of epoch e draws from NumPy's Generator seeded with (seed, e, i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from sgmim.data.ade20k import Ade20kSource
from sgmim.data.epochs import EpochDataset, EpochKey
from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.folder import FolderSource
from sgmim.data.kitti import KittiSource
from sgmim.data.nyu import nyu_source
from sgmim.data.pretrain import as_hw
from sgmim.data.synthetic import CLASS_NAMES, split_seeds
from sgmim.data.synthetic.source import CachedScenes
from sgmim.data.transforms import (
    IGNORE_INDEX,
    LABEL,
    METRIC_DEPTH,
    SMOOTH,
    augment_pair,
    image_to_tensor,
    normalize,
)
from sgmim.spec.data import AugmentConfig, DownstreamDataConfig

Task = Literal["depth", "segmentation"]
SYNTHETIC_SIZE = 192
SYNTHETIC_SCENES = 256


@dataclass(frozen=True)
class DatasetInfo:
    """Per-dataset defaults: the head's depth range, class count and training crop."""

    tasks: tuple[str, ...]
    max_depth: float | None = None
    num_classes: int | None = None
    crop_size: tuple[int, int] | None = None


DATASET_INFO: dict[str, DatasetInfo] = {
    "kitti": DatasetInfo(("depth",), max_depth=80.0, crop_size=(352, 352)),
    "nyu": DatasetInfo(("depth",), max_depth=10.0, crop_size=(448, 576)),
    "ade20k": DatasetInfo(("segmentation",), num_classes=150, crop_size=(512, 512)),
    # The largest room diagonal is under 12 m.
    "synthetic": DatasetInfo(("depth", "segmentation"), max_depth=12.0, num_classes=len(CLASS_NAMES)),
    "folder": DatasetInfo(("depth", "segmentation")),
}


class LabelledSource(Protocol):
    tasks: tuple[str, ...]

    def __len__(self) -> int: ...
    def name(self, index: int) -> str: ...
    def load(self, index: int) -> dict[str, np.ndarray]: ...


class SyntheticLabelledSource(CachedScenes):
    """Procedural scenes of one split with exact depth and semantic labels."""

    tasks = ("depth", "segmentation")

    def __init__(self, cfg: DownstreamDataConfig, split: str):
        super().__init__(split_seeds(split, cfg.seed, cfg.num_images or SYNTHETIC_SCENES),
                         as_hw(cfg.synthetic.render_size or SYNTHETIC_SIZE), cfg.synthetic,
                         {"rgb": "rgb", "depth": "depth", "label": "label"})

    def load(self, index: int) -> dict[str, np.ndarray]:
        item = self.get(index)
        return {"rgb": item["rgb"], "depth": item["depth"], "label": item["label"].astype(np.int64)}


class DownstreamDataset(EpochDataset):
    """Items: `image` (3, H, W) float32 normalised, `depth` (1, H, W) float32 metres (0 = invalid)
    or `label` (H, W) int64 (255 = ignore), and `name`."""

    def __init__(self, source: LabelledSource, task: Task, train: bool, augment: AugmentConfig,
                 crop_size: tuple[int, int] | None, seed: int, strict: bool):
        super().__init__()
        self.source, self.task, self.train = source, task, train
        self.augment, self.crop_size, self.seed = augment, crop_size, seed
        self.target = "depth" if task == "depth" else "label"
        self.kinds = {"image": SMOOTH, self.target: METRIC_DEPTH if task == "depth" else LABEL}
        self.policy = SkipPolicy(strict)

    def __len__(self) -> int:
        return len(self.source)

    def _to_tensors(self, item: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        target = torch.tensor(item[self.target])
        return {"image": image_to_tensor(item["rgb"]),
                self.target: target[None] if self.task == "depth" else target}

    def __getitem__(self, key: int | EpochKey) -> dict[str, torch.Tensor | str]:
        epoch, index = self.epoch_and_index(key)
        rng = np.random.default_rng([self.seed, epoch, index])
        index, item = self.policy.load(index, len(self.source), self.source.load)
        sample = self._to_tensors(item)
        if self.train:
            size = self.crop_size or tuple(sample["image"].shape[-2:])
            sample = augment_pair(sample, self.kinds, rng, self.augment, size)
        sample = {key: x.contiguous() for key, x in sample.items()}
        sample["image"] = normalize(sample["image"])
        return {**sample, "name": self.source.name(index)}


def _pad(x: torch.Tensor, height: int, width: int, fill: float) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=fill)


def pad_collate(items: list[dict]) -> dict:
    """Batch items of different sizes (ADE20K evaluation): pad bottom/right to the largest,
    with 0 for the image and depth (invalid) and 255 for labels (ignored)."""
    height = max(item["image"].shape[-2] for item in items)
    width = max(item["image"].shape[-1] for item in items)
    fills = {"image": 0.0, "depth": 0.0, "label": IGNORE_INDEX}
    batch: dict = {"name": [item["name"] for item in items]}
    for key, fill in fills.items():
        if key in items[0]:
            batch[key] = torch.stack([_pad(item[key], height, width, fill) for item in items])
    return batch


def make_source(cfg: DownstreamDataConfig, split: str, task: Task, policy: SkipPolicy) -> LabelledSource:
    limit = cfg.num_images
    if cfg.dataset == "synthetic":
        return SyntheticLabelledSource(cfg, split)
    if cfg.dataset == "kitti":
        return KittiSource(cfg.root, split, policy, limit)
    if cfg.dataset == "nyu":
        return nyu_source(cfg.root, split, policy, limit)
    if cfg.dataset == "ade20k":
        return Ade20kSource(cfg.root, split, policy, limit)
    return FolderSource(cfg.root, split, task, policy, limit, cfg.depth_scale)


def build_downstream_dataset(cfg: DownstreamDataConfig, split: str, task: Task,
                             train: bool) -> DownstreamDataset:
    """One split of a labelled dataset; `train` turns augmentation on (see the module doc)."""
    info = DATASET_INFO[cfg.dataset]
    if task not in info.tasks:
        raise DataError(f"dataset {cfg.dataset} has no {task} labels; it serves {', '.join(info.tasks)}")
    source = make_source(cfg, split, task, SkipPolicy(cfg.strict))
    crop = as_hw(cfg.crop_size) if cfg.crop_size else info.crop_size
    return DownstreamDataset(source, task, train, cfg.augment, crop, cfg.seed, cfg.strict)
