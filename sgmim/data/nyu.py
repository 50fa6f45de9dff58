"""NYU Depth v2, two layouts.

- The labelled set `nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5, read with h5py) with the
  official split `splits.mat` (`trainNdxs` 795 / `testNdxs` 654, 1-based). MATLAB stores
  arrays column-major, so h5py sees them transposed: `images` is (N, 3, W, H) and `depths`
  (N, W, H) in metres.
- BTS's "sync" layout: `sync/<scene>/rgb_XXXXX.jpg` with `sync_depth_XXXXX.png` (16-bit,
  value / 1000 = metres, 0 = invalid) listed in BTS split files.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import scipy.io

from sgmim.data.errors import DataError, SkipPolicy
from sgmim.data.io import read_png_values, read_rgb
from sgmim.data.splitfile import SplitFileSource, find_split_file

NYU_DEPTH_SCALE = 1000.0
NYU_SIZE = (480, 640)
LABELED_MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
MAT_SPLIT_KEYS = {"train": "trainNdxs", "val": "testNdxs", "test": "testNdxs"}
SPLIT_FILES = {"train": "nyudepthv2_train_files_with_gt.txt", "val": "nyudepthv2_test_files_with_gt.txt",
               "test": "nyudepthv2_test_files_with_gt.txt"}
IMAGE_BASES = ("", "sync", "official_splits/test", "official_splits/train")


def read_official_split(path: Path, split: str) -> np.ndarray:
    """0-based indices of `split` from splits.mat (MATLAB v5 via scipy, or v7.3 via h5py)."""
    key = MAT_SPLIT_KEYS[split]
    try:
        try:
            indices = scipy.io.loadmat(path)[key]
        except NotImplementedError:  # v7.3 files are HDF5
            with h5py.File(path, "r") as f:
                indices = f[key][()]
    except FileNotFoundError:
        raise DataError(f"{path}: missing; expected NYU's official splits.mat beside {LABELED_MAT}") from None
    except KeyError:
        raise DataError(f"{path}: no {key}; expected splits.mat with trainNdxs and testNdxs") from None
    except Exception as exc:  # scipy's MATLAB parser raises many types on a damaged file
        raise DataError(f"{path}: cannot be read as a .mat file ({type(exc).__name__}: {exc})") from None
    return np.asarray(indices, dtype=np.int64).ravel() - 1


class NyuLabeledSource:
    """The 1449 labelled frames, one split of them."""

    tasks = ("depth",)

    def __init__(self, mat_path: Path, split: str, limit: int | None = None):
        if split not in MAT_SPLIT_KEYS:
            raise DataError(f"NYU split {split!r}: expected train, val or test (val = the official test)")
        self.mat_path = mat_path
        with self._open() as f:
            count = self._check_layout(f)
        self.indices = read_official_split(mat_path.parent / SPLITS_MAT, split)[:limit]
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= count):
            raise DataError(f"{mat_path.parent / SPLITS_MAT}: indices outside 1..{count}")
        self._file, self._pid = None, None

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.mat_path, "r")
        except OSError as exc:
            raise DataError(f"{self.mat_path}: cannot be read as a MATLAB v7.3 (HDF5) file ({exc})") from None

    def _check_layout(self, f: h5py.File) -> int:
        height, width = NYU_SIZE
        images, depths = f.get("images"), f.get("depths")
        if images is None or depths is None or images.shape[1:] != (3, width, height) \
                or depths.shape[1:] != (width, height) or images.shape[0] != depths.shape[0]:
            found = {k: f[k].shape for k in ("images", "depths") if k in f}
            raise DataError(f"{self.mat_path}: found {found}; expected 'images' (N, 3, {width}, {height}) "
                            f"and 'depths' (N, {width}, {height}) as h5py reads MATLAB's arrays")
        return images.shape[0]

    def _handle(self) -> h5py.File:
        """One open file per process: HDF5 handles must not cross a fork into DataLoader workers."""
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = self._open(), os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None}

    def __len__(self) -> int:
        return len(self.indices)

    def name(self, index: int) -> str:
        return f"nyu_{self.indices[index] + 1:04d}"

    def load(self, index: int) -> dict[str, np.ndarray]:
        """`rgb` (480, 640, 3) uint8 and `depth` (480, 640) float32 metres."""
        f, i = self._handle(), int(self.indices[index])
        try:
            rgb = np.ascontiguousarray(f["images"][i].transpose(2, 1, 0))
            depth = np.ascontiguousarray(f["depths"][i].T, dtype=np.float32)
        except (OSError, KeyError) as exc:
            raise DataError(f"{self.mat_path}: frame {i + 1} cannot be read ({exc})") from None
        return {"rgb": rgb, "depth": depth}


class NyuSyncSource(SplitFileSource):
    """BTS's sync layout listed by a split file."""

    def __init__(self, root: Path, split_file: Path, policy: SkipPolicy, limit: int | None = None):
        super().__init__(root, split_file, IMAGE_BASES, IMAGE_BASES, policy, limit)

    def load(self, index: int) -> dict[str, np.ndarray]:
        """`rgb` (H, W, 3) uint8 and `depth` (H, W) float32 metres."""
        entry = self.entries[index]
        rgb = read_rgb(entry.image)
        raw = read_png_values(entry.target, "a 16-bit depth PNG (value / 1000 = metres)")
        if raw.dtype != np.uint16 or raw.shape != rgb.shape[:2]:
            raise DataError(f"{entry.target}: {raw.dtype} {raw.shape[0]}x{raw.shape[1]}; expected a 16-bit "
                            f"PNG of its image's size {rgb.shape[0]}x{rgb.shape[1]}")
        return {"rgb": rgb, "depth": raw.astype(np.float32) / NYU_DEPTH_SCALE}


def nyu_source(root: str | Path, split: str, policy: SkipPolicy,
               limit: int | None = None) -> NyuLabeledSource | NyuSyncSource:
    """A split-file path → sync layout; a split name → the labelled .mat if present, else the
    default BTS split file."""
    root = Path(root)
    named = split in MAT_SPLIT_KEYS
    if named and (root / LABELED_MAT).is_file():
        return NyuLabeledSource(root / LABELED_MAT, split, limit)
    if named and not (root / SPLIT_FILES[split]).is_file():
        raise DataError(f"{root}: expected {LABELED_MAT} with {SPLITS_MAT}, or BTS's sync layout with "
                        f"{SPLIT_FILES[split]}")
    return NyuSyncSource(root, find_split_file(root, split, SPLIT_FILES), policy, limit)
