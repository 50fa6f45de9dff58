"""Depth and segmentation metrics against hand-computed values and brute force."""

import math

import numpy as np
import pytest
import torch

from sgmim.data.kitti import kb_crop_box
from sgmim.metrics import ConfusionMatrix, DepthMeter, crop_mask, depth_metrics, segmentation_metrics


def test_depth_metrics_by_hand_with_invalid_pixels():
    # valid: gt in (1e-3, 80): 1, 2, 4; the 0 (no measurement) and the 100 (beyond max) are out
    gt = np.array([[1.0, 2.0, 0.0], [4.0, 100.0, 2.0]])
    pred = np.array([[1.0, 3.0, 5.0], [8.0, 7.0, 2.0]])
    gt[1, 2] = 0.0  # a second invalid pixel with a perfect prediction that must not count
    m = depth_metrics(pred, gt, min_depth=1e-3, max_depth=80.0)
    # pixels (p, g): (1, 1), (3, 2), (8, 4); ratios 1, 1.5, 2
    assert m["abs_rel"] == pytest.approx((0 + 0.5 + 1.0) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 1 / 2 + 16 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 16) / 3))
    d = np.log([1.0, 1.5, 2.0])
    assert m["rmse_log"] == pytest.approx(math.sqrt(np.mean(d ** 2)))
    assert m["log10"] == pytest.approx(np.mean(np.log10([1.0, 1.5, 2.0])))
    assert m["silog"] == pytest.approx(math.sqrt(np.mean(d ** 2) - np.mean(d) ** 2) * 100)
    assert m["delta1"] == pytest.approx(1 / 3)        # only ratio 1 < 1.25
    assert m["delta2"] == pytest.approx(2 / 3)        # 1.5 < 1.5625, 2 is not
    assert m["delta3"] == pytest.approx(2 / 3)        # 2 > 1.953


def test_predictions_are_clamped_to_the_depth_range():
    gt = np.array([[10.0, 5.0]])
    m = depth_metrics(np.array([[200.0, 0.0]]), gt, min_depth=1e-3, max_depth=80.0)
    # 200 → 80, 0 → 1e-3
    assert m["rmse"] == pytest.approx(math.sqrt(((80 - 10) ** 2 + (1e-3 - 5) ** 2) / 2))
    m = depth_metrics(np.array([[np.nan, np.inf]]), gt, max_depth=80.0)
    assert np.isfinite(list(m.values())).all()


def test_no_valid_pixel_gives_none_and_is_skipped_when_averaging():
    assert depth_metrics(np.ones((2, 2)), np.zeros((2, 2))) is None
    meter = DepthMeter()
    meter.add(depth_metrics(np.array([[2.0]]), np.array([[1.0]])))                 # rmse 1
    meter.add(depth_metrics(np.full((1, 3), 4.0), np.ones((1, 3))))                # rmse 3
    meter.add(None)
    # per image, then averaged: (1 + 3) / 2, not the pooled sqrt((1 + 27) / 4)
    assert meter.result()["rmse"] == pytest.approx(2.0)
    assert (meter.images, meter.skipped) == (2, 1)
    merged = DepthMeter.from_state(meter.state() * 2)
    assert merged.result()["rmse"] == pytest.approx(2.0) and merged.images == 4


def glpdepth_eval_mask(gt_depth: np.ndarray, kitti_crop: str) -> np.ndarray:
    """GLPDepth's `cropping_img` for KITTI (do_kb_crop on), written out: the map is cut to the
    KB crop, then the fractions are applied to the cropped map's size."""
    height, width = gt_depth.shape
    top_margin, left_margin = int(height - 352), int((width - 1216) / 2)
    gt_depth = gt_depth[top_margin:top_margin + 352, left_margin:left_margin + 1216]
    gt_height, gt_width = gt_depth.shape
    eval_mask = np.zeros(gt_depth.shape, dtype=bool)
    if kitti_crop == "garg":
        eval_mask[int(0.40810811 * gt_height):int(0.99189189 * gt_height),
                  int(0.03594771 * gt_width):int(0.96405229 * gt_width)] = True
    else:
        eval_mask[int(0.3324324 * gt_height):int(0.91351351 * gt_height),
                  int(0.0359477 * gt_width):int(0.96405229 * gt_width)] = True
    return eval_mask


# The KITTI raw frame sizes of the Eigen split.
@pytest.mark.parametrize("frame", [(375, 1242), (370, 1224), (370, 1226), (374, 1238), (376, 1241)])
@pytest.mark.parametrize("crop", ["garg", "eigen"])
def test_kitti_crops_follow_glpdepth_for_every_frame_size(frame, crop):
    rows, cols = kb_crop_box(*frame, "frame.png")                  # what the KITTI loader keeps
    gt_frame = np.full(frame, 10.0)
    gt = gt_frame[rows, cols]
    expected = glpdepth_eval_mask(gt_frame, crop)
    assert np.array_equal(crop_mask(gt.shape, crop, "kitti"), expected)
    # Through the evaluation loop: predictions wrong everywhere outside GLPDepth's region are
    # not counted; one wrong pixel at a corner inside it is.
    pred = np.where(expected, 10.0, 20.0)
    first, last = np.argwhere(expected)[[0, -1]]
    pred[tuple(first)] = 20.0
    pred[tuple(last)] = 20.0
    assert evaluated_abs_rel(pred, gt, crop) == pytest.approx(2.0 / expected.sum(), rel=1e-9)


class FixedPrediction(torch.nn.Module):
    def __init__(self, pred: np.ndarray):
        super().__init__()
        self.pred = torch.from_numpy(pred).float()[None, None]

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.pred.expand(image.shape[0], -1, -1, -1)}


def evaluated_abs_rel(pred: np.ndarray, gt: np.ndarray, crop: str) -> float:
    """abs_rel of `pred` against a KB-cropped KITTI map, as an evaluate job computes it."""
    from sgmim.train.distributed import DistEnv
    from sgmim.train.evaluate import EvalSettings, evaluate

    item = {"image": torch.zeros(3, *gt.shape), "depth": torch.from_numpy(gt).float()[None]}
    settings = EvalSettings(task="depth", dataset="kitti", split="val", input_size=gt.shape, crop=crop,
                            max_depth=80.0, batch_size=1)
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return evaluate(FixedPrediction(pred), [item], settings, env)["metrics"]["abs_rel"]


def test_garg_crop_of_the_kb_map_in_pixels():
    mask = crop_mask((352, 1216), "garg", "kitti")
    # rows int(0.408·352) = 143 .. int(0.992·352) = 349, columns 43 .. 1172
    assert mask.sum() == (349 - 143) * (1172 - 43)
    assert mask[143, 43] and not mask[142, 43] and not mask[143, 42] and not mask[349, 43]


def test_eigen_crops():
    nyu = crop_mask((480, 640), "eigen", "nyu")
    assert nyu.sum() == (471 - 45) * (601 - 41) and nyu[45, 41] and not nyu[44, 41] and not nyu[471, 600]
    kitti = crop_mask((375, 1242), "eigen", "kitti")
    rows, cols = np.nonzero(kitti)
    assert (rows.min(), rows.max() + 1) == (int(0.3324324 * 375), int(0.91351351 * 375))
    assert (cols.min(), cols.max() + 1) == (int(0.0359477 * 1242), int(0.96405229 * 1242))


def test_crop_removes_pixels_from_the_metrics():
    gt = np.full((480, 640), 2.0)
    pred = np.full((480, 640), 2.0)
    pred[:45] = 9.0                      # wrong only outside NYU's Eigen crop
    assert depth_metrics(pred, gt, max_depth=10.0, crop="eigen", dataset="nyu")["rmse"] == 0.0
    assert depth_metrics(pred, gt, max_depth=10.0, crop="none")["rmse"] > 1.0


def _brute_force(preds, gts, num_classes, ignore=255):
    pred = np.concatenate([p.ravel() for p in preds])
    gt = np.concatenate([g.ravel() for g in gts])
    keep = gt != ignore
    ious = {}
    for c in range(num_classes):
        inter = np.sum((pred == c) & (gt == c) & keep)
        union = np.sum(((pred == c) | (gt == c)) & keep)
        if union:
            ious[c] = inter / union
    return ious, np.sum((pred == gt) & keep) / np.sum(keep)


def test_miou_equals_brute_force_over_the_dataset():
    rng = np.random.default_rng(0)
    k = 6
    preds = [rng.integers(0, 4, size=(9, 7)) for _ in range(3)]       # classes 4, 5 never predicted
    gts = [rng.integers(0, 4, size=(9, 7)) for _ in range(3)]          # ... nor labelled
    for g in gts:
        g[rng.random(g.shape) < 0.2] = 255
    preds[1][0, 0], gts[1][0, 0] = 4, 255                              # predicted only where ignored
    acc = ConfusionMatrix(k)
    for p, g in zip(preds, gts, strict=True):
        acc.add(p, g)
    found = acc.result()
    ious, pixel_acc = _brute_force(preds, gts, k)
    assert sorted(ious) == [0, 1, 2, 3]
    assert found["miou"] == pytest.approx(np.mean(list(ious.values())))
    assert found["pixel_acc"] == pytest.approx(pixel_acc)
    for c in range(k):
        if c in ious:
            assert found["per_class_iou"][c] == pytest.approx(ious[c])
        else:
            assert math.isnan(found["per_class_iou"][c])           # absent from both: skipped
    assert found["classes_evaluated"] == 4
    # summed over the dataset, not averaged per image
    per_image = np.mean([np.mean(list(_brute_force([p], [g], k)[0].values()))
                         for p, g in zip(preds, gts, strict=True)])
    assert abs(per_image - found["miou"]) > 1e-6


def test_a_class_present_only_in_predictions_counts_as_zero():
    found = segmentation_metrics(ConfusionMatrix(3).matrix + np.array([[5, 1, 0], [0, 4, 0], [0, 0, 0]]))
    assert found["per_class_iou"][:2] == pytest.approx([5 / 6, 4 / 5])
    assert math.isnan(found["per_class_iou"][2])
    acc = ConfusionMatrix(3)
    acc.add(np.array([2, 0]), np.array([0, 0]))
    assert acc.result()["per_class_iou"][2] == 0.0 and acc.result()["miou"] == pytest.approx(0.25)
