"""SG-MIM losses and the depth target. Masks: 1 = masked, broadcast over channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sgmim.models.masking import upsample_mask


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean L1 over the pixels where `mask` is 1.

    pred, target: (B, C, H, W); mask: (B, 1, H, W). Normalised by (masked pixels · C), as
    SimMIM's `(l1 * mask).sum() / (mask.sum() + 1e-5) / in_chans`.
    """
    error = (pred - target).abs() * mask
    return error.sum() / (mask.sum() * pred.shape[1] + 1e-5)


def truncated_standardise(depth: torch.Tensor, trim: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """Per-image truncated standardisation (MultiMAE / the SG-MIM authors' code).

    depth: (B, 1, H, W). Each image's sorted values are cut to `[int(trim·n), int((1 - trim)·n))`
    and their mean and unbiased variance taken, the slice and the variance of the authors'
    training loop; every pixel is then `(d - mean) / sqrt(var + eps)`.
    """
    flat = depth.flatten(1).float()
    n = flat.shape[1]
    kept = flat.sort(dim=1).values[:, int(trim * n): int((1 - trim) * n)]
    mean = kept.mean(dim=1)
    var = kept.var(dim=1, unbiased=True)
    standardised = (flat - mean[:, None]) / torch.sqrt(var[:, None] + eps)
    return standardised.view_as(depth).to(depth.dtype)


def local_normalise(image: torch.Tensor, window: int, eps: float = 1e-6) -> torch.Tensor:
    """SimMIM's normalised target: every pixel standardised within its window.

    image: (B, C, H, W); window: odd side. Per channel, the mean and the unbiased variance
    (n / (n - 1), n the pixels of the window inside the image) of the `window`² neighbourhood
    centred on each pixel, clipped at the border; `(x - mean) / sqrt(max(var, 0) + eps)`.
    """
    pad = window // 2
    x = image.float()
    mean = F.avg_pool2d(x, window, stride=1, padding=pad, count_include_pad=False)
    mean_sq = F.avg_pool2d(x * x, window, stride=1, padding=pad, count_include_pad=False)
    ones = torch.ones_like(x[:1, :1])
    n = F.avg_pool2d(ones, window, stride=1, padding=pad, count_include_pad=True) * window ** 2
    var = ((mean_sq - mean ** 2) * n / (n - 1)).clamp(min=0)
    return ((x - mean) / torch.sqrt(var + eps)).to(image.dtype)


class DepthTarget(nn.Module):
    """The structured target S: each depth map truncated-standardised. No parameters; a module
    so that regional compilation fuses it (`sgmim.train.compile`)."""

    def __init__(self, trim: float):
        super().__init__()
        self.trim = trim

    def forward(self, depth: torch.Tensor) -> torch.Tensor:
        """depth: (B, 1, H, W) → (B, 1, H, W) standardised."""
        return truncated_standardise(depth, self.trim)


class MaskedReconstructionLoss(nn.Module):
    """L1 on the masked pixels between a prediction and its target, the target optionally
    normalised within `norm_window`² neighbourhoods (SimMIM's normalised pixel target). No
    parameters; a module so that regional compilation fuses it."""

    def __init__(self, patch_size: int, norm_window: int | None = None):
        super().__init__()
        self.patch_size, self.norm_window = patch_size, norm_window

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """pred, target: (B, C, H, W); mask: (B, h, w) on the patch grid, 1 = masked."""
        if self.norm_window is not None:
            target = local_normalise(target, self.norm_window)
        return masked_l1(pred, target, upsample_mask(mask, self.patch_size).to(target.dtype))
