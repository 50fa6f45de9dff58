"""KITTI depth, Eigen split: BTS/GLPDepth split files over the raw data and the annotated depth.

Ground truth is the 16-bit PNG of KITTI's depth benchmark: value / 256 = metres, 0 = no
measurement. Every image is first cut to the Kerl/Bergmann ("KB") crop, the bottom 352 rows
and the centred 1216 columns, which is where the LiDAR ground truth lives (BTS does this in
training and evaluation). The Garg / Eigen evaluation crops are then taken as fractions of
this 352 × 1216 map whatever the frame size, as GLPDepth does (`sgmim.metrics.depth`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.io import read_png_values, read_rgb
from sgmim.data.splitfile import SplitFileSource, find_split_file

KITTI_DEPTH_SCALE = 256.0
KB_CROP = (352, 1216)
SPLIT_FILES = {"train": "eigen_train_files_with_gt.txt", "val": "eigen_test_files_with_gt.txt",
               "test": "eigen_test_files_with_gt.txt"}
# Where the raw images and the annotated depth usually sit under the dataset root.
IMAGE_BASES = ("", "raw", "kitti_raw_data", "input")
DEPTH_BASES = ("", "data_depth_annotated", "data_depth_annotated/train", "data_depth_annotated/val",
               "gt_depth", "train", "val")


def kb_crop_box(height: int, width: int, path: Path) -> tuple[slice, slice]:
    """Rows and columns of the KB crop of a `height`×`width` KITTI frame."""
    crop_h, crop_w = KB_CROP
    if height < crop_h or width < crop_w:
        raise DataError(f"{path}: {height}x{width}; expected a KITTI frame of at least "
                        f"{crop_h}x{crop_w} for the KB crop")
    top, left = height - crop_h, (width - crop_w) // 2
    return slice(top, top + crop_h), slice(left, left + crop_w)


class KittiSource(SplitFileSource):
    def __init__(self, root: str | Path, split: str, policy: SkipPolicy, limit: int | None = None):
        root = Path(root)
        super().__init__(root, find_split_file(root, split, SPLIT_FILES), IMAGE_BASES, DEPTH_BASES,
                         policy, limit)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """KB-cropped `rgb` (352, 1216, 3) uint8 and `depth` (352, 1216) float32 metres."""
        entry = self.entries[index]
        rgb = read_rgb(entry.image)
        raw = read_png_values(entry.target, "a KITTI 16-bit depth PNG (value / 256 = metres)")
        if raw.dtype != np.uint16:
            raise DataError(f"{entry.target}: an 8-bit PNG; expected KITTI's 16-bit depth PNG")
        if raw.shape != rgb.shape[:2]:
            raise DataError(f"{entry.target}: {raw.shape[0]}x{raw.shape[1]} but the image {entry.image} "
                            f"is {rgb.shape[0]}x{rgb.shape[1]}; expected the same size")
        rows, cols = kb_crop_box(*rgb.shape[:2], entry.image)
        return {"rgb": rgb[rows, cols], "depth": raw[rows, cols].astype(np.float32) / KITTI_DEPTH_SCALE}
