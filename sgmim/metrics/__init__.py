"""Downstream metrics: monocular depth (per image, then averaged) and semantic segmentation
(confusion matrix over the whole dataset). Pure functions on NumPy arrays."""

from sgmim.metrics.depth import (
    DEPTH_METRICS,
    DepthMeter,
    crop_mask,
    depth_metrics,
)
from sgmim.metrics.segmentation import (
    ConfusionMatrix,
    confusion_matrix,
    segmentation_metrics,
)

__all__ = ["DEPTH_METRICS", "ConfusionMatrix", "DepthMeter", "confusion_matrix", "crop_mask",
           "depth_metrics", "segmentation_metrics"]
