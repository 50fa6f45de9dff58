"""build_downstream_dataset over fixtures in each real format: shapes, dtypes, units, splits."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from sgmim.data import (
    DATASET_INFO,
    IGNORE_INDEX,
    DataError,
    build_downstream_dataset,
    pad_collate,
    render_scene,
)
from sgmim.data.synthetic import split_seeds
from sgmim.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from sgmim.spec import AugmentConfig, DownstreamDataConfig

from .conftest import KITTI_SHAPE, NYU_TEST, NYU_TRAIN, nyu_frame, save_label, save_png16, save_rgb


def config(dataset: str, root=None, **kwargs) -> DownstreamDataConfig:
    return DownstreamDataConfig(dataset=dataset, root=str(root) if root else None, **kwargs)


def unnormalize(image: torch.Tensor) -> torch.Tensor:
    return image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


# KITTI

def test_kitti_eval_is_the_kb_crop_in_metres(kitti_root):
    dataset = build_downstream_dataset(config("kitti", kitti_root), "val", "depth", train=False)
    assert len(dataset) == 1, "the line without ground truth (None) is left out"
    item = dataset[0]
    assert item["image"].shape == (3, 352, 1216) and item["depth"].shape == (1, 352, 1216)
    assert item["depth"].dtype == torch.float32
    top, left = KITTI_SHAPE[0] - 352, (KITTI_SHAPE[1] - 1216) // 2
    assert item["depth"][0, 300 - top, 600 - left] == pytest.approx(12.5)
    assert (item["depth"] > 0).sum() == 1, "0 stays invalid"
    assert item["name"].startswith("raw/2011_09_26/2011_09_26_drive_0002_sync")


def test_kitti_train_split_resolves_annotated_train_and_crops(kitti_root):
    cfg = config("kitti", kitti_root)
    dataset = build_downstream_dataset(cfg, "train", "depth", train=True)
    assert len(dataset) == 2
    assert dataset[0]["depth"].shape == (1, *DATASET_INFO["kitti"].crop_size)
    split_file = kitti_root / "eigen_train_files_with_gt.txt"
    by_path = build_downstream_dataset(cfg, str(split_file), "depth", train=False)
    assert len(by_path) == 2


def test_kitti_reports_missing_files_and_bad_lines(kitti_root, caplog):
    split = kitti_root / "eigen_train_files_with_gt.txt"
    split.write_text(split.read_text() + "2011_09_26/x/image_02/data/0000000001.png x/gt.png 721.5\n")
    with caplog.at_level(logging.WARNING, logger="sgmim.data"):
        dataset = build_downstream_dataset(config("kitti", kitti_root), "train", "depth", train=False)
    assert len(dataset) == 2 and "line 3" in caplog.text
    with pytest.raises(DataError, match="line 3"):
        build_downstream_dataset(config("kitti", kitti_root, strict=True), "train", "depth", train=False)
    split.write_text("just-one-column\n")
    with pytest.raises(DataError, match=r"eigen_train_files_with_gt.txt:1: expected '<image path>"):
        build_downstream_dataset(config("kitti", kitti_root), "train", "depth", train=False)


def test_kitti_has_no_segmentation_and_needs_a_split_file(kitti_root, tmp_path):
    with pytest.raises(DataError, match="kitti has no segmentation"):
        build_downstream_dataset(config("kitti", kitti_root), "train", "segmentation", train=False)
    with pytest.raises(DataError, match="no split file"):
        build_downstream_dataset(config("kitti", tmp_path), "train", "depth", train=False)


# NYU

def test_nyu_labelled_mat_is_transposed_back_and_split_officially(nyu_mat_root):
    cfg = config("nyu", nyu_mat_root)
    train = build_downstream_dataset(cfg, "train", "depth", train=False)
    test = build_downstream_dataset(cfg, "test", "depth", train=False)
    assert [train[i]["name"] for i in range(len(train))] == [f"nyu_{i:04d}" for i in NYU_TRAIN]
    assert [test[i]["name"] for i in range(len(test))] == [f"nyu_{i:04d}" for i in NYU_TEST]
    item = test[1]  # frame 5, 0-based 4
    rgb, depth = nyu_frame(4)
    assert item["image"].shape == (3, 480, 640) and item["depth"].shape == (1, 480, 640)
    np.testing.assert_allclose(unnormalize(item["image"])[:, 10, 20].numpy() * 255, rgb[10, 20], atol=0.01)
    assert item["depth"][0, 10, 20] == pytest.approx(9.5) and item["depth"][0, 0, 0] == pytest.approx(5.0)


def test_nyu_training_crop_comes_from_the_dataset_default(nyu_mat_root):
    dataset = build_downstream_dataset(config("nyu", nyu_mat_root), "train", "depth", train=True)
    assert dataset[0]["depth"].shape == (1, *DATASET_INFO["nyu"].crop_size)


def test_nyu_mat_with_the_wrong_layout_is_refused(nyu_mat_root):
    import h5py

    with h5py.File(nyu_mat_root / "nyu_depth_v2_labeled.mat", "r+") as f:
        del f["images"]
        f["images"] = np.zeros((5, 480, 640, 3), np.uint8)   # not MATLAB's transposed layout
    with pytest.raises(DataError, match=r"expected 'images' \(N, 3, 640, 480\)"):
        build_downstream_dataset(config("nyu", nyu_mat_root), "train", "depth", train=False)


def test_nyu_damaged_files_are_named(nyu_mat_root):
    (nyu_mat_root / "splits.mat").write_bytes(b"MATLAB 5.0 MAT-file, damaged" * 8)
    with pytest.raises(DataError, match=r"splits.mat: cannot be read as a .mat file"):
        build_downstream_dataset(config("nyu", nyu_mat_root), "train", "depth", train=False)
    (nyu_mat_root / "nyu_depth_v2_labeled.mat").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"nyu_depth_v2_labeled.mat: cannot be read as a MATLAB v7.3"):
        build_downstream_dataset(config("nyu", nyu_mat_root), "train", "depth", train=False)


def test_nyu_sync_layout_reads_bts_split_files(nyu_sync_root):
    cfg = config("nyu", nyu_sync_root)
    train = build_downstream_dataset(cfg, "train", "depth", train=False)
    test = build_downstream_dataset(cfg, "val", "depth", train=False)
    assert len(train) == 2 and len(test) == 1
    assert train[0]["depth"].unique().tolist() == [pytest.approx(2.5)]
    assert test[0]["depth"].unique().tolist() == [pytest.approx(1.0)]
    assert train[0]["image"].shape == (3, 480, 640)


def test_nyu_without_either_layout_says_what_it_expected(tmp_path):
    with pytest.raises(DataError, match="nyu_depth_v2_labeled.mat with splits.mat, or BTS's sync layout"):
        build_downstream_dataset(config("nyu", tmp_path), "train", "depth", train=False)


# ADE20K

def test_ade20k_labels_shift_down_with_zero_ignored(ade_root):
    dataset = build_downstream_dataset(config("ade20k", ade_root), "val", "segmentation", train=False)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["label"].dtype == torch.int64 and item["label"].shape == (64, 96)
    assert set(item["label"].unique().tolist()) == {0, 149, IGNORE_INDEX}
    assert (item["label"][:32, 24:] == IGNORE_INDEX).all() and (item["label"][32:, 24:] == 0).all()
    batch = pad_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 80, 96) and batch["label"].shape == (2, 80, 96)
    assert (batch["label"][1, :, 64:] == IGNORE_INDEX).all(), "padding is ignored"


def test_ade20k_training_pads_to_the_crop_with_ignore(ade_root):
    dataset = build_downstream_dataset(config("ade20k", ade_root / "ADEChallengeData2016"), "train",
                                       "segmentation", train=True)
    item = dataset[0]
    assert item["label"].shape == (512, 512) and item["image"].shape == (3, 512, 512)
    assert (item["label"] == IGNORE_INDEX).float().mean() > 0.9


def test_ade20k_refuses_a_wrong_root(tmp_path):
    with pytest.raises(DataError, match="expected ADEChallengeData2016/"):
        build_downstream_dataset(config("ade20k", tmp_path), "train", "segmentation", train=False)


# A labelled folder and the synthetic scenes

def test_folder_depth_png_scale_and_labels(tmp_path, rng):
    save_rgb(tmp_path / "val/images/x/a.png", rng.integers(0, 256, (30, 40, 3)))
    save_png16(tmp_path / "val/gt_depth/x/a.png", np.full((30, 40), 4000))
    save_label(tmp_path / "val/labels/x/a.png", np.full((30, 40), 3))
    depth = build_downstream_dataset(config("folder", tmp_path, depth_scale=256.0), "val", "depth", False)
    assert depth[0]["depth"].unique().tolist() == [pytest.approx(4000 / 256)]
    labels = build_downstream_dataset(config("folder", tmp_path), "val", "segmentation", False)
    assert labels[0]["label"].unique().tolist() == [3] and labels[0]["name"] == "x/a.png"


def test_synthetic_splits_are_disjoint_and_carry_exact_depth():
    cfg = config("synthetic", num_images=3, synthetic={"render_size": 40})
    train = build_downstream_dataset(cfg, "train", "depth", train=False)
    val = build_downstream_dataset(cfg, "val", "depth", train=False)
    assert {train[i]["name"] for i in range(3)}.isdisjoint(val[i]["name"] for i in range(3))
    seed = split_seeds("val", 0, 3)[1]
    np.testing.assert_array_equal(val[1]["depth"][0].numpy(), render_scene(seed, 40).depth)
    labels = build_downstream_dataset(cfg, "val", "segmentation", train=False)
    np.testing.assert_array_equal(labels[1]["label"].numpy(), render_scene(seed, 40).label)


def test_training_items_are_deterministic_per_epoch():
    cfg = config("synthetic", num_images=2, crop_size=24, synthetic={"render_size": 40},
                 augment=AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), color_jitter=0.2))
    a, b = (build_downstream_dataset(cfg, "train", "depth", train=True) for _ in range(2))
    a.set_epoch(2)
    b.set_epoch(2)
    assert torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(a[1]["depth"], b[1]["depth"])
    b.set_epoch(3)
    assert not torch.equal(a[1]["image"], b[1]["image"])
    assert a[1]["depth"].shape == (1, 24, 24)
    # the trainer's (epoch, index) keys give the item of that epoch, whatever set_epoch says
    keyed = b[(2, 1)]
    assert torch.equal(keyed["image"], a[1]["image"]) and torch.equal(keyed["depth"], a[1]["depth"])


def test_corrupt_ground_truth_is_skipped_and_counted(kitti_root, caplog):
    gt = next((kitti_root / "data_depth_annotated/train").rglob("0000000005.png"))
    gt.write_bytes(gt.read_bytes()[:100])  # truncated
    dataset = build_downstream_dataset(config("kitti", kitti_root), "train", "depth", train=False)
    with caplog.at_level(logging.WARNING, logger="sgmim.data"):
        item = dataset[0]
    assert dataset.policy.skipped == 1 and "0000000005.png" in caplog.text
    assert item["name"].endswith("0000000006.png")
    strict = build_downstream_dataset(config("kitti", kitti_root, strict=True), "train", "depth", False)
    with pytest.raises(DataError, match="0000000005.png: cannot be read"):
        strict[0]


def test_training_pipeline_keeps_labels_on_their_pixels(tmp_path):
    """Image red channel, metric depth and labels all encode the column, through crop and flip."""
    columns = np.tile(np.arange(200), (50, 1))
    save_rgb(tmp_path / "train/images/ramp.png", np.stack([columns] * 3, axis=-1))
    save_png16(tmp_path / "train/gt_depth/ramp.png", (columns + 1) * 100)
    save_label(tmp_path / "train/labels/ramp.png", columns)
    flips = set()
    for task, key in (("depth", "depth"), ("segmentation", "label")):
        cfg = config("folder", tmp_path, crop_size=(40, 64), augment=AugmentConfig(crop_scale=(0.3, 0.8)))
        dataset = build_downstream_dataset(cfg, "train", task, train=True)
        for epoch in range(6):
            dataset.set_epoch(epoch)
            item = dataset[0]
            red = unnormalize(item["image"])[0] * 255
            target = item[key].squeeze(0)
            column = target * 10 - 1 if task == "depth" else target.float()
            assert (red - column).abs().max() <= 2.0, f"{task}, epoch {epoch}"
            flips.add(bool(red[0, 0] > red[0, -1]))
    assert flips == {True, False}
