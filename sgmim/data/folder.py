"""A labelled folder of one's own (what `sgmim data synth` writes):
`<split>/images/<path>.<jpg|png>` with `<split>/gt_depth/<path>.<png|npy>` (metric depth; PNG
value / depth_scale = metres, 0 = invalid) and/or `<split>/labels/<path>.png` (8-bit class
ids, 255 = ignore)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.image_folder import list_images, resolve_folder
from sgmim.data.io import read_npy, read_png_values, read_rgb

FOLDER_DEPTH_SCALE = 1000.0
TARGET_DIRS = {"depth": "gt_depth", "segmentation": "labels"}
TARGET_SUFFIXES = {"depth": (".png", ".npy"), "segmentation": (".png",)}


class FolderSource:
    tasks = ("depth", "segmentation")

    def __init__(self, root: str | Path, split: str, task: str, policy: SkipPolicy,
                 limit: int | None = None, depth_scale: float | None = None):
        self.folder = resolve_folder(Path(root), split)
        self.task = task
        self.depth_scale = depth_scale or FOLDER_DEPTH_SCALE
        image_dir, target_dir = self.folder / "images", self.folder / TARGET_DIRS[task]
        if not target_dir.is_dir():
            raise DataError(f"{target_dir}: missing; expected {TARGET_DIRS[task]}/ mirroring images/ "
                            f"for the {task} task")
        images = list_images(image_dir)
        if not images:
            raise DataError(f"{image_dir}: no .jpg or .png images found")
        self.pairs, missing = [], []
        for image in images:
            stem = target_dir / image.relative_to(image_dir).with_suffix("")
            found = [stem.with_suffix(s) for s in TARGET_SUFFIXES[task] if stem.with_suffix(s).is_file()]
            if found:
                self.pairs.append((image, found[0]))
            else:
                missing.append(str(image.relative_to(self.folder)))
        policy.report_missing("images", missing, f"a {TARGET_DIRS[task]}/ file")
        self.pairs = self.pairs[:limit]

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0].relative_to(self.folder / "images"))

    def _read_target(self, path: Path) -> np.ndarray:
        if self.task == "segmentation":
            return read_png_values(path, "an 8-bit label PNG (255 = ignore)").astype(np.int64)
        if path.suffix == ".npy":
            return np.nan_to_num(read_npy(path), nan=0.0, posinf=0.0, neginf=0.0)
        return read_png_values(path, "a 16-bit depth PNG").astype(np.float32) / self.depth_scale

    def load(self, index: int) -> dict[str, np.ndarray]:
        """`rgb` (H, W, 3) uint8 plus `depth` (H, W) float32 metres or `label` (H, W) int64."""
        image_path, target_path = self.pairs[index]
        rgb = read_rgb(image_path)
        target = self._read_target(target_path)
        if target.shape != rgb.shape[:2]:
            raise DataError(f"{target_path}: {target.shape[0]}x{target.shape[1]}; expected its image's "
                            f"size {rgb.shape[0]}x{rgb.shape[1]}")
        return {"rgb": rgb, "depth" if self.task == "depth" else "label": target}
