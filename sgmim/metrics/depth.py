"""Monocular depth metrics as BTS and GLPDepth compute them (docs/method.md "Metrics").

Per image: the valid pixels are `min_depth < gt < max_depth`, intersected with the Garg or
Eigen crop when asked (KITTI: the fractions applied to the 352 × 1216 KB-cropped map, as
GLPDepth's evaluation does, which the paper's KITTI baselines use); the prediction is clamped
to [min_depth, max_depth] (non-finite values to the nearest end) before the metrics are taken
over the valid pixels. Images are then averaged with equal weight; an image without a valid
pixel is left out (and counted).

Conventions, with d = log(pred) − log(gt):
- abs_rel = mean(|pred − gt| / gt), sq_rel = mean((pred − gt)² / gt)
- rmse = sqrt(mean((pred − gt)²)), rmse_log = sqrt(mean(d²))
- log10 = mean(|log10 pred − log10 gt|)
- silog = sqrt(mean(d²) − mean(d)²) · 100: the KITTI benchmark's scale-invariant log error as
  BTS evaluates it. (GLPDepth's evaluation prints sqrt(mean(d²) − 0.5·mean(d)²) without the
  × 100; its numbers are not comparable with this one.)
- δk = fraction of pixels with max(gt/pred, pred/gt) < 1.25^k, k = 1, 2, 3.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")

# KITTI crops as fractions of the map (rows, then columns), BTS's numbers. GLPDepth applies
# them to the KB-cropped 352 × 1216 map whatever the frame size (370 × 1224 … 376 × 1241),
# and so do we: the maps evaluated here are KB-cropped by the loader.
GARG_CROP = ((0.40810811, 0.99189189), (0.03594771, 0.96405229))
EIGEN_CROP_KITTI = ((0.3324324, 0.91351351), (0.0359477, 0.96405229))
# NYU's Eigen crop is given in pixels of the 480 × 640 frame: rows 45:471, columns 41:601.
NYU_FRAME = (480, 640)
EIGEN_CROP_NYU = ((45, 471), (41, 601))


def crop_mask(shape: tuple[int, int], crop: str, dataset: str = "kitti") -> np.ndarray:
    """Boolean (H, W) mask of the evaluation crop of an (H, W) ground-truth map.

    `crop`: "none", "garg" or "eigen" (KITTI fractions of the map; for `dataset` "nyu" the
    Eigen crop is NYU's [45:471, 41:601], scaled when the map is not 480 × 640).
    """
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    if crop == "none":
        mask[:] = True
        return mask
    if crop == "eigen" and dataset == "nyu":
        (r0, r1), (c0, c1) = EIGEN_CROP_NYU
        sh, sw = height / NYU_FRAME[0], width / NYU_FRAME[1]
        mask[round(r0 * sh):round(r1 * sh), round(c0 * sw):round(c1 * sw)] = True
        return mask
    if crop not in ("garg", "eigen"):
        raise ValueError(f"unknown depth evaluation crop {crop!r}: expected none, garg or eigen")
    (r0, r1), (c0, c1) = GARG_CROP if crop == "garg" else EIGEN_CROP_KITTI
    mask[int(r0 * height):int(r1 * height), int(c0 * width):int(c1 * width)] = True
    return mask


def depth_metrics(pred: np.ndarray, gt: np.ndarray, min_depth: float = 1e-3, max_depth: float = 80.0,
                  crop: str = "none", dataset: str = "kitti") -> dict[str, float] | None:
    """The metrics of one image: `pred` and `gt` (H, W) in metres (gt 0 = no measurement).
    None when no pixel is valid."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    pred = pred[0] if pred.ndim == 3 and pred.shape[0] == 1 else pred      # (1, H, W) → (H, W)
    gt = gt[0] if gt.ndim == 3 and gt.shape[0] == 1 else gt
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} must both be (H, W)")
    valid = (gt > min_depth) & (gt < max_depth)
    if crop != "none":
        valid &= crop_mask(gt.shape, crop, dataset)
    if not valid.any():
        return None
    p = np.nan_to_num(pred[valid], nan=min_depth, posinf=max_depth, neginf=min_depth)
    p = np.clip(p, min_depth, max_depth)
    g = gt[valid]
    ratio = np.maximum(g / p, p / g)
    diff = p - g
    d = np.log(p) - np.log(g)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff ** 2 / g)),
        "rmse": float(np.sqrt(np.mean(diff ** 2))),
        "rmse_log": float(np.sqrt(np.mean(d ** 2))),
        "log10": float(np.mean(np.abs(np.log10(p) - np.log10(g)))),
        "silog": float(np.sqrt(max(np.mean(d ** 2) - np.mean(d) ** 2, 0.0)) * 100),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25 ** 2)),
        "delta3": float(np.mean(ratio < 1.25 ** 3)),
    }


@dataclass
class DepthMeter:
    """Sums of per-image metrics; `state()`/`merge` let ranks add theirs up."""

    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(DEPTH_METRICS, 0.0))
    images: int = 0
    skipped: int = 0

    def add(self, metrics: dict[str, float] | None) -> None:
        if metrics is None:
            self.skipped += 1
            return
        for name in DEPTH_METRICS:
            self.sums[name] += metrics[name]
        self.images += 1

    def state(self) -> np.ndarray:
        return np.array([*(self.sums[n] for n in DEPTH_METRICS), self.images, self.skipped], dtype=np.float64)

    @classmethod
    def from_state(cls, state: np.ndarray) -> DepthMeter:
        sums = {n: float(v) for n, v in zip(DEPTH_METRICS, state[:len(DEPTH_METRICS)], strict=True)}
        return cls(sums, int(round(state[-2])), int(round(state[-1])))

    def result(self) -> dict[str, float]:
        """Means over the images with a valid pixel (NaN when there was none)."""
        return {n: (self.sums[n] / self.images if self.images else float("nan")) for n in DEPTH_METRICS}
