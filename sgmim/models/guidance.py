"""The relational guidance framework: structured-feature extractors and the fusion block.

Every extractor maps a depth map (B, 1, H, W) and the structured mask (B, h, w) on the encoder's
patch grid (1 = masked) to S_F: (B, h', w', C) on the encoder's output grid and width.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.models.swin_transformer import PatchMerging
from torch import nn

from sgmim.models.encoder import MaskedEncoder


class MLPExtractor(nn.Module):
    """The paper's "shallow MLP": depth patch embedding + LayerNorm, zeroed where masked, then
    Swin patch merging (LN + Linear 4D→2D, no bias) down to the encoder's output grid. Linear
    throughout, as in the authors' code. The embedding width is derived so that the merges land
    exactly on the encoder's width (Swin-B: 1024 / 2³ = 128)."""

    def __init__(self, encoder: MaskedEncoder):
        super().__init__()
        num_merges = int(math.log2(encoder.out_stride // encoder.patch_size))
        if encoder.out_dim % 2 ** num_merges:
            raise ValueError(f"encoder width {encoder.out_dim} is not divisible by 2^{num_merges}")
        embed_dim = encoder.out_dim // 2 ** num_merges
        self.proj = nn.Conv2d(1, embed_dim, encoder.patch_size, encoder.patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        self.merges = nn.Sequential(*[PatchMerging(embed_dim * 2 ** i) for i in range(num_merges)])

    def forward(self, depth: torch.Tensor, struct_mask: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.proj(depth).permute(0, 2, 3, 1))      # (B, h, w, D0)
        x = x * (1 - struct_mask).unsqueeze(-1).to(x.dtype)       # only visible depth survives
        return self.merges(x)                                      # (B, h', w', C)


class TransformerExtractor(nn.Module):
    """A second encoder of the same architecture on the depth map (paper Table 5)."""

    def __init__(self, encoder: MaskedEncoder):
        super().__init__()
        self.depth_encoder = MaskedEncoder(encoder.config, in_chans=1)

    def forward(self, depth: torch.Tensor, struct_mask: torch.Tensor) -> torch.Tensor:
        return self.depth_encoder(depth, struct_mask).permute(0, 2, 3, 1)


class SiameseExtractor(nn.Module):
    """The image encoder's own blocks and mask token on a 1-channel depth patch embedding
    (weight sharing, paper Table 5). The encoder is referenced, not registered a second time."""

    def __init__(self, encoder: MaskedEncoder):
        super().__init__()
        self.patch_embed = copy.deepcopy(encoder.backbone.patch_embed)
        conv = self.patch_embed.proj
        self.patch_embed.proj = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride)
        self._encoder = [encoder]  # a list keeps it out of this module's parameters

    def forward(self, depth: torch.Tensor, struct_mask: torch.Tensor) -> torch.Tensor:
        encoder = self._encoder[0]
        tokens = self.patch_embed(depth)
        if encoder.is_vit:
            tokens = tokens.reshape(depth.shape[0], *encoder.grid_size, -1)
        return encoder.encode_tokens(encoder.apply_mask(tokens, struct_mask)).permute(0, 2, 3, 1)


EXTRACTORS = {"mlp": MLPExtractor, "transformer": TransformerExtractor, "siamese": SiameseExtractor}


class FusionBlock(nn.Module):
    """I_SF = I_F + MHCA(LN(I_F), LN(S_F)); I_SF = I_SF + MLP(LN(I_SF)).

    Queries come from every image token; keys and values from every structured token (the
    paper's code), or only from those that see visible depth (`attend_visible_only`, the
    authors' later code). `position_embedding` adds one learned table to both streams first.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, num_tokens: int,
                 position_embedding: bool, attend_visible_only: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"fusion_heads {num_heads} does not divide the encoder width {dim}")
        self.num_heads = num_heads
        self.attend_visible_only = attend_visible_only
        self.norm_image = nn.LayerNorm(dim)
        self.norm_struct = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.pos_embed = None
        if position_embedding:
            self.pos_embed = nn.Parameter(trunc_normal_(torch.zeros(1, num_tokens, dim), std=0.02))

    def cross_attention(self, x: torch.Tensor, s: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) queries; s: (B, M, C) keys/values; visible: (B, M) bool."""
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(s).view(B, s.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if not self.attend_visible_only:
            out = F.scaled_dot_product_attention(q, k, v)
            return self.proj(out.transpose(1, 2).reshape(B, N, C))
        # A sample with no visible structured token attends nowhere; let it attend everywhere
        # (softmax over an empty set is NaN) and zero its output instead.
        has_keys = visible.any(dim=1)
        allowed = visible | ~has_keys[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None, None, :])
        out = self.proj(out.transpose(1, 2).reshape(B, N, C))
        return out * has_keys[:, None, None].to(out.dtype)

    def forward(self, image_feat: torch.Tensor, struct_feat: torch.Tensor,
                struct_visible: torch.Tensor) -> torch.Tensor:
        """image_feat: (B, N, C) = I_F; struct_feat: (B, N, C) = S_F; struct_visible: (B, N)."""
        x, s = image_feat, struct_feat
        if self.pos_embed is not None:
            x, s = x + self.pos_embed, s + self.pos_embed
        x = x + self.cross_attention(self.norm_image(x), self.norm_struct(s), struct_visible)
        return x + self.mlp(self.norm_mlp(x))


def visible_tokens(struct_mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, h, w) patch-grid mask (1 = masked) → (B, h'·w') bool: output token sees any depth."""
    visible = (1 - struct_mask).unsqueeze(1).float()
    return F.max_pool2d(visible, factor).flatten(1) > 0
