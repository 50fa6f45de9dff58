"""The pretraining image folder: `images/<any/sub/path>.<jpg|png>` with a mirrored
`depth/<same path>.png` (16-bit, value / 65535) or `.npy` structured-knowledge map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.io import IMAGE_SUFFIXES, read_npy, read_png_values, read_rgb

DEPTH_SUFFIXES = (".png", ".npy")
# A depth map may be stored at another resolution, but not another shape of image.
ASPECT_TOLERANCE = 0.02


def list_images(folder: Path) -> list[Path]:
    """Every JPEG/PNG under `folder`, sorted (hidden files, e.g. partial writes, left out)."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())


def resolve_folder(root: Path, split: str) -> Path:
    """`root/<split>` when it holds images/, else `root` itself for the train split."""
    candidates = [root / split] + ([root] if split == "train" else [])
    for candidate in candidates:
        if (candidate / "images").is_dir():
            return candidate
    tried = " or ".join(str(c / "images") for c in candidates)
    raise DataError(f"{root}: no image folder for split {split!r}; expected {tried} "
                    "(images/<path>.jpg|png with depth/<path>.png|npy beside it)")


def pair_depth_maps(folder: Path, policy: SkipPolicy, limit: int | None = None) -> list[tuple[Path, Path]]:
    """(image, depth map) paths under `folder`; images without a map are reported, not dropped
    silently (an error in strict mode)."""
    images_dir, depth_dir = folder / "images", folder / "depth"
    images = list_images(images_dir)
    if not images:
        raise DataError(f"{images_dir}: no .jpg or .png images found")
    if not depth_dir.is_dir():
        raise DataError(f"{depth_dir}: missing; expected a depth/ folder mirroring images/ "
                        "(make one with `sgmim data pseudo-depth`)")
    pairs, missing = [], []
    for image in images:
        stem = depth_dir / image.relative_to(images_dir).with_suffix("")
        found = next((stem.with_suffix(s) for s in DEPTH_SUFFIXES if stem.with_suffix(s).is_file()), None)
        if found is None:
            missing.append(str(image.relative_to(folder)))
        else:
            pairs.append((image, found))
    policy.report_missing("images", missing, "a depth map (depth/<same path>.png or .npy)")
    if not pairs:
        raise DataError(f"{folder}: none of the {len(images)} images has a depth map in {depth_dir}")
    return pairs[:limit] if limit else pairs


def read_structure_map(path: Path) -> np.ndarray:
    """A structured-knowledge map as (H, W) float32 in [0, 1].

    PNG: value / the bit depth's maximum. `.npy`: kept if already in [0, 1], else min-max
    normalised (a raw network output has arbitrary scale and shift).
    """
    if path.suffix == ".npy":
        values = read_npy(path)
        if not np.isfinite(values).all():
            raise DataError(f"{path}: NaN or infinite values; expected a finite depth map")
        if values.min() >= 0.0 and values.max() <= 1.0:
            return values
        span = np.ptp(values)
        return (values - values.min()) / (span if span > 0 else 1.0)
    values = read_png_values(path, "a 16-bit (or 8-bit) greyscale PNG")
    return values.astype(np.float32) / np.iinfo(values.dtype).max


def match_size(depth: np.ndarray, shape: tuple[int, int], path: Path) -> np.ndarray:
    """Resize a map stored at another resolution to `shape`; refuse another aspect ratio."""
    if depth.shape == shape:
        return depth
    if abs(depth.shape[1] / depth.shape[0] - shape[1] / shape[0]) > ASPECT_TOLERANCE * shape[1] / shape[0]:
        raise DataError(f"{path}: depth map is {depth.shape[0]}x{depth.shape[1]} but its image is "
                        f"{shape[0]}x{shape[1]}; expected the same aspect ratio")
    resized = F.interpolate(torch.from_numpy(depth)[None, None], size=shape, mode="bilinear",
                            align_corners=False, antialias=True)
    return resized[0, 0].numpy()


class ImageFolderSource:
    """Image and structured-knowledge map pairs read from disk."""

    def __init__(self, root: str | Path, split: str, policy: SkipPolicy, limit: int | None = None):
        self.folder = resolve_folder(Path(root), split)
        self.pairs = pair_depth_maps(self.folder, policy, limit)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return str(self.pairs[index][0].relative_to(self.folder / "images"))

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) float32 map in [0, 1]."""
        image_path, depth_path = self.pairs[index]
        rgb = read_rgb(image_path)
        depth = match_size(read_structure_map(depth_path), rgb.shape[:2], depth_path)
        return rgb, depth
