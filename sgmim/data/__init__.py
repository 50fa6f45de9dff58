"""The data layer: synthetic RGB-D scenes, on-disk dataset formats and structured knowledge.

- `build_pretrain_dataset`: image + structured-knowledge map + masks, for SG-MIM pretraining.
- `build_downstream_dataset`: image + metric depth or class labels, for fine-tuning/evaluation.
- `render_scene`: one procedural RGB-D scene (RGB, depth, labels, instances, pseudo-depth).

The dataset sections of the job spec are in `sgmim.spec.data`.
"""

from sgmim.data.downstream import (
    DATASET_INFO,
    DatasetInfo,
    DownstreamDataset,
    build_downstream_dataset,
    pad_collate,
)
from sgmim.data.errors import DataError
from sgmim.data.pretrain import PretrainDataset, build_pretrain_dataset
from sgmim.data.synthetic import CLASS_NAMES, SPLITS, Scene, render_scene
from sgmim.data.transforms import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CLASS_NAMES", "DATASET_INFO", "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "SPLITS",
    "DataError", "DatasetInfo", "DownstreamDataset", "PretrainDataset", "Scene",
    "build_downstream_dataset", "build_pretrain_dataset", "pad_collate", "render_scene",
]
