"""ADE20K scene parsing (`ADEChallengeData2016`): 150 classes, label 0 ("other") → ignore.

Layout: `images/{training,validation}/ADE_*.jpg` and `annotations/{...}/ADE_*.png` (8-bit ids
0..150). Ids are shifted down by one so classes are 0..149, and 0 becomes 255 = ignore.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.image_folder import list_images
from sgmim.data.io import read_png_values, read_rgb
from sgmim.data.transforms import IGNORE_INDEX

ADE_NUM_CLASSES = 150
ADE_FOLDER = "ADEChallengeData2016"
SPLIT_FOLDERS = {"train": "training", "training": "training", "val": "validation",
                 "validation": "validation"}


def ade_base(root: Path) -> Path:
    """The ADEChallengeData2016 folder: `root` itself or its child of that name."""
    for base in (root, root / ADE_FOLDER):
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            return base
    raise DataError(f"{root}: expected {ADE_FOLDER}/ (or its content) with images/ and annotations/")


def reduce_labels(ids: np.ndarray) -> np.ndarray:
    """(H, W) ADE ids 0..150 → int64 classes 0..149 with 0 → IGNORE_INDEX."""
    labels = ids.astype(np.int64) - 1
    labels[ids == 0] = IGNORE_INDEX
    return labels


class Ade20kSource:
    tasks = ("segmentation",)

    def __init__(self, root: str | Path, split: str, policy: SkipPolicy, limit: int | None = None):
        if split not in SPLIT_FOLDERS:
            raise DataError(f"ADE20K split {split!r}: expected train or val (the test release has "
                            "no annotations)")
        base = ade_base(Path(root))
        folder = SPLIT_FOLDERS[split]
        image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
        images = list_images(image_dir)
        if not images:
            raise DataError(f"{image_dir}: no .jpg images; expected ADE_*.jpg files")
        self.pairs, missing = [], []
        for image in images:
            label = label_dir / image.relative_to(image_dir).with_suffix(".png")
            if label.is_file():
                self.pairs.append((image, label))
            else:
                missing.append(str(image.relative_to(base)))
        policy.report_missing("images", missing, f"an annotation PNG in {label_dir}")
        self.pairs = self.pairs[:limit]
        self.base = base

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0].stem

    def load(self, index: int) -> dict[str, np.ndarray]:
        """`rgb` (H, W, 3) uint8 and `label` (H, W) int64, 255 = ignore."""
        image_path, label_path = self.pairs[index]
        rgb = read_rgb(image_path)
        ids = read_png_values(label_path, "an 8-bit ADE20K annotation PNG")
        if ids.shape != rgb.shape[:2] or ids.max() > ADE_NUM_CLASSES:
            raise DataError(f"{label_path}: {ids.shape[0]}x{ids.shape[1]} with ids up to {ids.max()}; "
                            f"expected {rgb.shape[0]}x{rgb.shape[1]} with ids 0..{ADE_NUM_CLASSES}")
        return {"rgb": rgb, "label": reduce_labels(ids)}
