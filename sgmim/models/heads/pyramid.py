"""Multi-scale features (strides 4, 8, 16, 32) for the DPT and UperNet heads.

- Swin/SwinV2: the four stage outputs; the last is normed by the backbone's final norm, the
  others by a LayerNorm each (as mmseg's Swin backbone adds for dense prediction).
- ViT: four blocks' tokens (after the backbone's final norm), the class token folded in by a
  projection (DPT's readout) or dropped, projected by a 1×1 conv and resampled from the patch
  stride p to stride s: ConvTranspose k=s' s=s' up for p/s = s' > 1, identity, or stride-2 3×3
  convs down (DPT's reassemble; BEiT/ViTDet use the same deconv/pool pyramid).
"""

from __future__ import annotations

import torch
from torch import nn

from sgmim.models.heads.common import octaves

PYRAMID_STRIDES = (4, 8, 16, 32)


class SwinPyramid(nn.Module):
    def __init__(self, channels: list[int], strides: list[int]):
        super().__init__()
        self.channels, self.strides = list(channels), list(strides)
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in channels[:-1])

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        """(B, C_i, h_i, w_i) per stage, the last already normed → normed maps, same shapes."""
        out = [norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
               for norm, x in zip(self.norms, stages, strict=False)]
        return [*out, stages[-1]]


class Readout(nn.Module):
    """DPT's 'project' readout: concat each patch token with the mean prefix token → Linear → GELU."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)                                     # (B, h·w, C)
        cls = prefix.mean(1, keepdim=True).expand(-1, tokens.shape[1], -1)         # (B, h·w, C)
        tokens = self.proj(torch.cat([tokens, cls], dim=-1))
        return tokens.transpose(1, 2).reshape(b, c, h, w)


def resampler(channels: int, factor: float) -> nn.Module:
    """Scale a (B, C, h, w) map by a power-of-two `factor`."""
    n = octaves(factor)
    if n > 0:
        return nn.ConvTranspose2d(channels, channels, 2 ** n, stride=2 ** n)
    if n == 0:
        return nn.Identity()
    return nn.Sequential(*(nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in range(-n)))


class ViTPyramid(nn.Module):
    def __init__(self, dim: int, patch: int, channels: list[int], readout: bool,
                 strides: tuple[int, ...] = PYRAMID_STRIDES):
        super().__init__()
        self.channels, self.strides = list(channels), list(strides)
        self.readouts = nn.ModuleList(Readout(dim) for _ in channels) if readout else None
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, c, 1), resampler(c, patch / s))
            for c, s in zip(channels, strides, strict=True))

    def forward(self, taps: list[tuple[torch.Tensor, torch.Tensor | None]]) -> list[torch.Tensor]:
        """Per tap: (B, D, H/p, W/p) tokens and (B, P, D) prefix tokens → (B, C_i, H/s_i, W/s_i)."""
        out = []
        for i, (x, prefix) in enumerate(taps):
            if self.readouts is not None:
                x = self.readouts[i](x, prefix)
            out.append(self.levels[i](x))
        return out
