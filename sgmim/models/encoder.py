"""A timm Swin / SwinV2 / ViT with SimMIM's mask token.

The backbone is the unmodified timm model (head-less), so its state dict loads strictly into
`timm.create_model(timm_name, **timm_kwargs)`. Masking happens between the patch embedding and
the blocks: masked patch embeddings are replaced by a learned `mask_token`. SimMIM's ViT is
timm's BEiT with SimMIM's layout (`config.SIMMIM_VIT_LAYOUT`); timm's ViT stays available.
"""

from __future__ import annotations

import timm
import torch
from timm.layers import trunc_normal_
from timm.models.beit import Beit
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sgmim.spec.model import EncoderConfig

BACKBONES = (SwinTransformer, SwinTransformerV2, VisionTransformer, Beit)
VIT_BACKBONES = (VisionTransformer, Beit)


def simmim_vit_init(net: Beit) -> None:
    """SimMIM's ViT initialisation: every Linear and the patch embedding trunc-normal(0.02) cut
    at one standard deviation (its `_trunc_normal_` override, a = -std, b = std), biases zero,
    the class token likewise; then BEiT's depth rescaling of each block's output projections."""
    def cut_normal(tensor: torch.Tensor) -> None:
        trunc_normal_(tensor, std=0.02, a=-0.02, b=0.02)

    for module in [*net.modules()]:
        if isinstance(module, nn.Linear | nn.Conv2d):
            cut_normal(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    cut_normal(net.cls_token)
    net.fix_init_weight()


def use_fused_attention(backbone: nn.Module) -> None:
    """Attention through PyTorch's fused SDPA kernels: timm uses them for ViT but leaves them
    off for Swin ("experimental"), where they compute the same softmax(q·kᵀ/√d + bias + mask)·v
    (checked by tests/models/test_encoder.py). SwinV2's cosine attention has no fused path."""
    for module in backbone.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = True


class MaskedEncoder(nn.Module):
    def __init__(self, config: EncoderConfig, in_chans: int = 3):
        super().__init__()
        self.config = config
        self.timm_kwargs = config.timm_kwargs()
        if in_chans != 3:
            self.timm_kwargs["in_chans"] = in_chans
        self.backbone = timm.create_model(config.timm_name, pretrained=False, **self.timm_kwargs)
        if not isinstance(self.backbone, BACKBONES):
            raise ValueError(f"{config.timm_name!r} is a {type(self.backbone).__name__}, "
                             "not a Swin, SwinV2 or ViT")
        self.is_vit = isinstance(self.backbone, VIT_BACKBONES)
        simmim_vit = isinstance(self.backbone, Beit)
        if simmim_vit:
            simmim_vit_init(self.backbone)
        use_fused_attention(self.backbone)
        self.embed_dim = self.backbone.patch_embed.proj.out_channels
        self.patch_size = self.backbone.patch_embed.patch_size[0]
        self.grid_size = tuple(self.backbone.patch_embed.grid_size)
        self.out_dim = self.backbone.num_features
        self.out_stride = self.patch_size * (1 if self.is_vit else 2 ** (len(self.backbone.layers) - 1))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 1, self.embed_dim))
        bound = 0.02 if simmim_vit else 2.0     # SimMIM's ViT: cut at one std; its Swin: at ±2
        trunc_normal_(self.mask_token, std=0.02, a=-bound, b=bound)

    @property
    def out_grid(self) -> tuple[int, int]:
        return self.grid_size[0] * self.patch_size // self.out_stride, \
            self.grid_size[1] * self.patch_size // self.out_stride

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, H, W) → patch embeddings (B, h, w, D)."""
        tokens = self.backbone.patch_embed(x)
        if self.is_vit:  # timm's ViT patch embedding flattens to (B, h·w, D)
            tokens = tokens.reshape(x.shape[0], *self.grid_size, -1)
        return tokens

    def apply_mask(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """tokens: (B, h, w, D); mask: (B, h, w), 1 = masked → masked tokens replaced."""
        if mask is None:
            return tokens
        w = mask.unsqueeze(-1).to(tokens.dtype)
        return tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch embeddings (B, h, w, D) → last-stage features after the final norm (B, C, h', w')."""
        net = self.backbone
        if isinstance(net, Beit):
            x = self._beit_blocks(tokens.flatten(1, 2))
        elif self.is_vit:
            x = net._pos_embed(tokens.flatten(1, 2))
            x = net.norm(net.blocks(net.norm_pre(net.patch_drop(x))))
        else:
            return net.norm(net.layers(tokens)).permute(0, 3, 1, 2)
        x = x[:, net.num_prefix_tokens:]                                   # (B, h·w, C)
        return x.transpose(1, 2).reshape(x.shape[0], -1, *self.out_grid)

    def _beit_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h·w, D) → (B, 1 + h·w, D): BEiT's forward_features after its patch embedding."""
        net = self.backbone
        x = torch.cat((net.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens), dim=1)
        if net.pos_embed is not None:
            x = x + net.pos_embed
        x = net.pos_drop(x)
        rel_pos_bias = net.rel_pos_bias() if net.rel_pos_bias is not None else None
        for block in net.blocks:
            x = block(x, shared_rel_pos_bias=rel_pos_bias)
        return net.norm(x)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C_in, H, W); mask: (B, h, w) on the patch grid, 1 = masked → (B, C, h', w')."""
        return self.encode_tokens(self.apply_mask(self.embed(x), mask))

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights that load with strict=True into `timm.create_model(timm_name, **timm_kwargs)`."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
