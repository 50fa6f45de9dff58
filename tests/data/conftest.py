"""Fixture datasets written in each real on-disk format, a few files each."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

KITTI_SHAPE = (375, 1242)  # a typical raw KITTI frame


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


def save_png16(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path


def save_label(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids.astype(np.uint8)).save(path)
    return path


def random_rgb(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.integers(0, 256, (*shape, 3), dtype=np.uint8)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def kitti_root(tmp_path: Path, rng) -> Path:
    """raw/ + data_depth_annotated/{train,val}/ with Eigen split files as BTS writes them.

    Every ground truth is 0 except one marker pixel inside the KB crop: row 300, col 600 holds
    12.5 m (3200 / 256).
    """
    root = tmp_path / "kitti"
    lines = {"train": [], "test": []}
    for split, drive, frames in (("train", "2011_09_26_drive_0001_sync", (5, 6)),
                                 ("val", "2011_09_26_drive_0002_sync", (69,))):
        for frame in frames:
            name = f"{frame:010d}.png"
            image = f"2011_09_26/{drive}/image_02/data/{name}"
            gt = f"{drive}/proj_depth/groundtruth/image_02/{name}"
            save_rgb(root / "raw" / image, random_rgb(rng, KITTI_SHAPE))
            depth = np.zeros(KITTI_SHAPE, np.uint16)
            depth[300, 600] = 3200
            save_png16(root / "data_depth_annotated" / split / gt, depth)
            lines["train" if split == "train" else "test"].append(f"{image} {gt} 721.5377")
    lines["test"].append("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000070.png None 721.5377")
    (root / "eigen_train_files_with_gt.txt").write_text("\n".join(lines["train"]) + "\n")
    (root / "eigen_test_files_with_gt.txt").write_text("\n".join(lines["test"]) + "\n")
    return root


NYU_FRAMES = 5
NYU_TRAIN, NYU_TEST = [1, 3, 4], [2, 5]  # 1-based, as in splits.mat


def nyu_frame(index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame `index` (0-based) in MATLAB's (H, W) sense: RGB with a marker, depth in metres."""
    rgb = np.zeros((480, 640, 3), np.uint8)
    rgb[10, 20] = (255, 0, index)
    depth = np.full((480, 640), 1.0 + index, np.float32)
    depth[10, 20] = 9.5
    return rgb, depth


@pytest.fixture
def nyu_mat_root(tmp_path: Path) -> Path:
    """nyu_depth_v2_labeled.mat (HDF5, arrays transposed as MATLAB v7.3 stores them) + splits.mat."""
    root = tmp_path / "nyu"
    root.mkdir()
    frames = [nyu_frame(i) for i in range(NYU_FRAMES)]
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = np.stack([rgb.transpose(2, 1, 0) for rgb, _ in frames])   # (N, 3, 640, 480)
        f["depths"] = np.stack([depth.T for _, depth in frames])                # (N, 640, 480)
        f["labels"] = np.zeros((NYU_FRAMES, 640, 480), np.uint16)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array(NYU_TRAIN)[:, None],
                                           "testNdxs": np.array(NYU_TEST)[:, None]})
    return root


@pytest.fixture
def nyu_sync_root(tmp_path: Path, rng) -> Path:
    """BTS's layout: sync/<scene>/rgb_*.jpg + sync_depth_*.png (value / 1000 = metres)."""
    root = tmp_path / "nyu_sync"
    train, test = [], []
    for scene, frame in (("kitchen_0028b", 45), ("bedroom_0004", 12)):
        save_rgb(root / "sync" / scene / f"rgb_{frame:05d}.jpg", random_rgb(rng, (480, 640)))
        save_png16(root / "sync" / scene / f"sync_depth_{frame:05d}.png", np.full((480, 640), 2500))
        train.append(f"/{scene}/rgb_{frame:05d}.jpg /{scene}/sync_depth_{frame:05d}.png 518.8579")
    save_rgb(root / "official_splits/test/bathroom/rgb_00045.jpg", random_rgb(rng, (480, 640)))
    save_png16(root / "official_splits/test/bathroom/sync_depth_00045.png", np.full((480, 640), 1000))
    test.append("bathroom/rgb_00045.jpg bathroom/sync_depth_00045.png 518.8579")
    (root / "nyudepthv2_train_files_with_gt.txt").write_text("\n".join(train) + "\n")
    (root / "nyudepthv2_test_files_with_gt.txt").write_text("\n".join(test) + "\n")
    return root


@pytest.fixture
def ade_root(tmp_path: Path, rng) -> Path:
    """ADEChallengeData2016 with images of two sizes; ids 0 (other), 1 and 150 in each map."""
    base = tmp_path / "ade" / "ADEChallengeData2016"
    for folder, prefix, shapes in (("training", "ADE_train", [(96, 128), (120, 80)]),
                                   ("validation", "ADE_val", [(64, 96), (80, 64)])):
        for i, shape in enumerate(shapes, start=1):
            name = f"{prefix}_{i:08d}"
            save_rgb(base / "images" / folder / f"{name}.jpg", random_rgb(rng, shape))
            ids = np.ones(shape, np.uint8)
            ids[: shape[0] // 2] = 0
            ids[:, : shape[1] // 4] = 150
            save_label(base / "annotations" / folder / f"{name}.png", ids)
    return tmp_path / "ade"


@pytest.fixture
def image_folder_root(tmp_path: Path, rng) -> Path:
    """images/ in sub-folders with depth/ as 16-bit PNG or .npy, and one image without depth."""
    root = tmp_path / "pretrain"
    save_rgb(root / "images/a/one.jpg", random_rgb(rng, (40, 50)))
    save_png16(root / "depth/a/one.png", np.full((40, 50), 65535 // 4))
    save_rgb(root / "images/b/c/two.png", random_rgb(rng, (40, 50)))
    (root / "depth/b/c").mkdir(parents=True)
    np.save(root / "depth/b/c/two.npy", np.full((40, 50), 0.75, np.float32))
    save_rgb(root / "images/three.png", random_rgb(rng, (40, 50)))
    save_png16(root / "depth/three.png", np.full((20, 25), 65535))  # half resolution: resized
    save_rgb(root / "images/orphan.jpg", random_rgb(rng, (40, 50)))
    return root
