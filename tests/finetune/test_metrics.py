"""Depth and segmentation metrics against hand-computed values and brute force."""

import math

import numpy as np
import pytest

from sgmim.metrics import ConfusionMatrix, DepthMeter, crop_mask, depth_metrics, segmentation_metrics
from sgmim.metrics.depth import kitti_kb_frame


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


def test_garg_crop_of_a_kb_cropped_kitti_map_matches_the_full_frame():
    frame = np.zeros((375, 1242), dtype=bool)
    frame[int(0.40810811 * 375):int(0.99189189 * 375), int(0.03594771 * 1242):int(0.96405229 * 1242)] = True
    top, left = 375 - 352, (1242 - 1216) // 2
    mask = crop_mask((352, 1216), "garg", "kitti", kitti_kb_frame((352, 1216)))
    assert np.array_equal(mask, frame[top:top + 352, left:left + 1216])
    # rows 153..371 and columns 44..1197 of the frame = rows 130..348, columns 31..1184 here
    assert mask.sum() == (348 - 130) * (1184 - 31)
    assert mask[130, 31] and not mask[129, 31] and not mask[130, 30] and not mask[348, 31]


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
