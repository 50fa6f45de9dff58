"""GLPDepth-style deconvolution depth head on the encoder's last stage (docs/method.md; the SimMIM
authors' depth code): num_deconv × [ConvTranspose k2 s2 → norm → ReLU], conv3×3 → norm → ReLU,
bilinear ×2 for each octave of the encoder stride the deconvolutions did not cover (2 for
Swin's stride 32), then conv3×3 → ReLU → conv3×3 and `sigmoid · max_depth`."""

from __future__ import annotations

import torch
from torch import nn

from sgmim.models.heads.common import make_norm, octaves, resize


class GLPDepthHead(nn.Module):
    def __init__(self, in_channels: int, stride: int, channels: int, num_deconv: int,
                 deconv_filters: int, norm: str, max_depth: float):
        super().__init__()
        total = octaves(stride)
        deconvs = min(num_deconv, total)
        layers: list[nn.Module] = []
        width = in_channels
        for _ in range(deconvs):
            layers += [nn.ConvTranspose2d(width, deconv_filters, 2, stride=2, bias=False),
                       make_norm(norm, deconv_filters), nn.ReLU(inplace=True)]
            width = deconv_filters
        self.deconv = nn.Sequential(*layers)
        self.conv = nn.Sequential(nn.Conv2d(width, channels, 3, padding=1, bias=False),
                                  make_norm(norm, channels), nn.ReLU(inplace=True))
        self.upsamplings = total - deconvs
        self.last = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=False),
                                  nn.Conv2d(channels, 1, 3, padding=1))
        self.max_depth = max_depth
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: convolutions N(0, 0.001), zero bias (output starts at
        max_depth / 2 everywhere)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feature: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """feature: (B, C, H/s, W/s) → depth (B, 1, H, W) in (0, max_depth)."""
        x = self.conv(self.deconv(feature))                       # (B, channels, H/s·2^deconvs, ...)
        for _ in range(self.upsamplings):
            x = resize(x, (x.shape[-2] * 2, x.shape[-1] * 2))      # bilinear ×2
        x = resize(x, out_size)                                   # exact size when H, W ∤ s
        return torch.sigmoid(self.last(x)) * self.max_depth
