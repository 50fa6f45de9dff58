"""DPT decoder (Ranftl et al. 2021): four feature levels (strides 4, 8, 16, 32) projected to a
common width, fused coarse to fine by RefineNet-style blocks, then the depth head
conv3×3 → ×2 → conv3×3 → ReLU → conv1×1 and `sigmoid · max_depth` (DPT ends with a ReLU; the
sigmoid bounds metric depth like the other heads here)."""

from __future__ import annotations

import torch
from torch import nn

from sgmim.models.heads.common import resize


class ResidualConvUnit(nn.Module):
    """x + conv3×3(ReLU(conv3×3(ReLU(x))))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(self.act(x))))


class FusionBlock(nn.Module):
    """(coarser path + RCU(skip)) → RCU → resize to the next level → conv1×1. The coarsest
    block has no skip input, so it has no first RCU (no parameter left without a gradient)."""

    def __init__(self, channels: int, has_skip: bool):
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels) if has_skip else None
        self.unit = ResidualConvUnit(channels)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size) -> torch.Tensor:
        if self.skip_unit is not None:
            x = x + self.skip_unit(skip)
        return self.out(resize(self.unit(x), size))


class DPTHead(nn.Module):
    def __init__(self, in_channels: list[int], channels: int, max_depth: float):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, channels, 3, padding=1, bias=False) for c in in_channels)
        levels = len(in_channels)
        self.fusion = nn.ModuleList(FusionBlock(channels, has_skip=i < levels - 1) for i in range(levels))
        self.conv1 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.last = nn.Sequential(nn.Conv2d(channels // 2, 32, 3, padding=1), nn.ReLU(inplace=False),
                                  nn.Conv2d(32, 1, 1))
        self.max_depth = max_depth

    def forward(self, features: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """features: fine to coarse, (B, C_i, H/s_i, W/s_i) → depth (B, 1, H, W)."""
        feats = [p(f) for p, f in zip(self.project, features, strict=True)]   # (B, channels, ...)
        x = None
        for i in range(len(feats) - 1, -1, -1):
            finest = feats[0].shape[-2:]
            size = feats[i - 1].shape[-2:] if i > 0 else (finest[0] * 2, finest[1] * 2)
            x = self.fusion[i](feats[i] if x is None else x, None if x is None else feats[i], size)
        x = self.conv1(x)                                        # (B, channels/2, H/2, W/2) for s_0 = 4
        x = resize(x, out_size)
        return torch.sigmoid(self.last(x)) * self.max_depth
