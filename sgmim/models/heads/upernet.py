"""UperNet (Xiao et al. 2018, as mmseg's UPerHead) and the auxiliary FCN head for semantic
segmentation: pyramid pooling (scales 1, 2, 3, 6) on the coarsest level, a top-down FPN over
the others, all levels fused at the finest resolution, then a 1×1 classifier; logits are
resized to the input size."""

from __future__ import annotations

import torch
from torch import nn

from sgmim.models.heads.common import ConvNormAct, resize


class PyramidPooling(nn.Module):
    def __init__(self, in_channels: int, channels: int, scales: list[int], norm: str):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels, 1, norm))
            for s in scales)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [resize(branch(x), x.shape[-2:]) for branch in self.branches]


class UperNetHead(nn.Module):
    def __init__(self, in_channels: list[int], channels: int, num_classes: int, pool_scales: list[int],
                 norm: str, dropout: float):
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], channels, pool_scales, norm)
        self.bottleneck = ConvNormAct(in_channels[-1] + len(pool_scales) * channels, channels, 3, norm)
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1, norm) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in in_channels[:-1])
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """features: fine to coarse (B, C_i, H/s_i, W/s_i) → logits (B, K, H, W)."""
        top = features[-1]
        laterals = [conv(f) for conv, f in zip(self.lateral, features[:-1], strict=True)]
        laterals.append(self.bottleneck(torch.cat([top, *self.ppm(top)], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):                 # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]                                # the finest level (stride 4)
        x = self.fuse(torch.cat([resize(o, size) for o in outs], dim=1))
        return resize(self.classifier(self.dropout(x)), out_size)


class FCNHead(nn.Module):
    """Auxiliary head (mmseg's FCNHead, one conv): conv3×3 → norm → ReLU → dropout → 1×1."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, norm: str, dropout: float):
        super().__init__()
        self.conv = ConvNormAct(in_channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feature: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return resize(self.classifier(self.dropout(self.conv(feature))), out_size)
