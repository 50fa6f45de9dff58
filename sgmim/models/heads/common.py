"""Building blocks shared by the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_count(channels: int) -> int:
    """GroupNorm groups: 32 as usual, fewer when the width does not divide or a group would hold
    a single channel (a 1 × 1 map, as pyramid pooling's, then has one value per group)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and (channels // g >= 2 or g == 1))


def make_norm(kind: str, channels: int) -> nn.Module:
    """"batch": BatchNorm2d (converted to SyncBatchNorm for multi-GPU runs); "group": GroupNorm,
    which does not depend on the batch (one image per process works)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    raise ValueError(f"unknown head norm {kind!r}: expected batch or group (resolve auto first)")


class ConvNormAct(nn.Sequential):
    """Conv (no bias) → norm → ReLU, 'same' padding (mmcv's ConvModule)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, norm: str):
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
                         make_norm(norm, out_ch), nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) to `size` (no-op when it already has it)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def octaves(factor: float) -> int:
    """log2 of a power-of-two scale factor (raises on anything else)."""
    n = round(torch.log2(torch.tensor(float(factor))).item())
    if 2.0 ** n != factor:
        raise ValueError(f"scale factor {factor} is not a power of two")
    return n
