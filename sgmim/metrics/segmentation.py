"""Semantic segmentation metrics over a whole dataset (mmseg's convention, docs/method.md).

A K × K confusion matrix (rows: ground truth, columns: prediction) is accumulated over every
image; pixels labelled `ignore_index` (255) or outside [0, K) are left out. Then per class
IoU = TP / (TP + FP + FN); mIoU averages the classes whose union is not empty (a class absent
from both the ground truth and the predictions of the whole dataset is skipped, not counted
as 0 or 1); pixel accuracy = TP summed / labelled pixels; mean accuracy averages TP / GT over
classes present in the ground truth.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction."""
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {gt.size}")
    keep = (gt != ignore_index) & (gt >= 0) & (gt < num_classes)
    index = gt[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def segmentation_metrics(matrix: np.ndarray) -> dict:
    """mIoU, pixel accuracy, mean accuracy and per-class IoU (NaN for a class absent from both)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    gt_count, pred_count = matrix.sum(1), matrix.sum(0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = matrix.sum()
    present = union > 0
    return {
        "miou": float(np.mean(iou[present])) if present.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(np.nanmean(acc)) if (gt_count > 0).any() else float("nan"),
        "per_class_iou": iou.tolist(),
        "classes_evaluated": int(present.sum()),
        "pixels": int(total),
    }


class ConfusionMatrix:
    """Accumulates `confusion_matrix` over batches; `matrix` can be summed across ranks."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        self.matrix += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def result(self) -> dict:
        return segmentation_metrics(self.matrix)
