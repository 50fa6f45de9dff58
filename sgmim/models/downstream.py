"""Encoder + head for depth estimation or semantic segmentation (fine-tuning and evaluation).

The encoder is the unmodified timm model (`backbone.*` in the state dict, so a pretraining
export loads into it), the head reads either its last stage (GLPDepth) or four feature levels
at strides 4/8/16/32 (`neck.*`, then DPT or UperNet). Every output is at the input resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import timm
import torch
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import nn

from sgmim.models.encoder import BACKBONES, VIT_BACKBONES
from sgmim.models.heads import DPTHead, FCNHead, GLPDepthHead, SwinPyramid, UperNetHead, ViTPyramid

DEFAULT_CHANNELS = {"dpt": 256, "upernet": 512}


@dataclass(frozen=True)
class HeadSpec:
    """A head with every default resolved (what the export records and evaluation rebuilds)."""

    kind: str                      # glpdepth | dpt | upernet
    channels: int
    norm: str                      # batch | group
    max_depth: float | None = None
    num_classes: int | None = None
    num_deconv: int = 3
    deconv_filters: int = 32
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    aux_channels: int = 256
    aux_weight: float = 0.4
    dropout: float = 0.1
    vit_taps: tuple[int, ...] | None = None
    readout: str = "project"

    @property
    def task(self) -> str:
        return "segmentation" if self.kind == "upernet" else "depth"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict) -> HeadSpec:
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**data)


def create_backbone(timm_name: str, timm_kwargs: dict) -> nn.Module:
    kwargs = {**timm_kwargs, "num_classes": 0}
    for key in ("img_size", "depths", "num_heads"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    net = timm.create_model(timm_name, pretrained=False, **kwargs)
    if not isinstance(net, BACKBONES):
        raise ValueError(f"{timm_name!r} is a {type(net).__name__}, not a Swin, SwinV2 or ViT")
    return net


def default_vit_taps(depth: int) -> tuple[int, ...]:
    """Four blocks evenly spaced and ending at the last (ViT-B/12: 2, 5, 8, 11, as DPT)."""
    return tuple(max(0, math.ceil((i + 1) * depth / 4) - 1) for i in range(4))


class DownstreamModel(nn.Module):
    def __init__(self, timm_name: str, timm_kwargs: dict, head: HeadSpec):
        super().__init__()
        self.timm_name, self.timm_kwargs, self.spec = timm_name, dict(timm_kwargs), head
        self.backbone = create_backbone(timm_name, timm_kwargs)
        net = self.backbone
        self.is_vit = isinstance(net, VIT_BACKBONES)
        self.patch = net.patch_embed.patch_size[0]
        self.input_size: tuple[int, int] = tuple(net.patch_embed.img_size)
        self.family = "vit" if self.is_vit else ("swinv2" if isinstance(net, SwinTransformerV2) else "swin")
        if self.is_vit:
            self.depths = [len(net.blocks)]
            out_channels, out_stride = net.embed_dim, self.patch
        else:
            self.depths = [len(layer.blocks) for layer in net.layers]
            out_channels, out_stride = net.feature_info[-1]["num_chs"], net.feature_info[-1]["reduction"]
        self.neck: nn.Module | None = None
        self.aux_head: nn.Module | None = None
        if head.kind == "glpdepth":
            self.head = GLPDepthHead(out_channels, out_stride, head.channels, head.num_deconv,
                                     head.deconv_filters, head.norm, head.max_depth)
            return
        if self.is_vit:
            self.taps = head.vit_taps or default_vit_taps(len(net.blocks))
            if max(self.taps) != len(net.blocks) - 1 or min(self.taps) < 0:
                raise ValueError(f"head.vit_taps {list(self.taps)} must lie in 0..{len(net.blocks) - 1} and "
                                 "include the last block (later blocks would get no gradient)")
            dim = net.embed_dim
            widths = [max(dim // 8, 8), max(dim // 4, 8), max(dim // 2, 8), dim] if head.kind == "dpt" \
                else [dim] * 4
            readout = head.readout == "project" and net.num_prefix_tokens > 0
            self.neck = ViTPyramid(dim, self.patch, widths, readout)
        else:
            info = net.feature_info
            self.neck = SwinPyramid([f["num_chs"] for f in info], [f["reduction"] for f in info])
        levels = self.neck.channels
        if head.kind == "dpt":
            self.head = DPTHead(levels, head.channels, head.max_depth)
        else:
            self.head = UperNetHead(levels, head.channels, head.num_classes, list(head.pool_scales),
                                    head.norm, head.dropout)
            if head.aux_weight > 0:
                self.aux_head = FCNHead(levels[2], head.aux_channels, head.num_classes, head.norm,
                                        head.dropout)

    @property
    def num_layers(self) -> int:
        """Transformer blocks in the encoder (layer-wise LR decay counts these)."""
        return sum(self.depths)

    def last_stage(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → the last stage after the final norm, (B, C, H/s, W/s)."""
        x = self.backbone.forward_features(image)
        if self.is_vit:
            x = x[:, self.backbone.num_prefix_tokens:]
            h, w = image.shape[-2] // self.patch, image.shape[-1] // self.patch
            return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return x.permute(0, 3, 1, 2)

    def pyramid(self, image: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) → four maps at strides 4, 8, 16, 32 (channels `self.neck.channels`)."""
        net = self.backbone
        if self.is_vit:
            unique = sorted(set(self.taps))
            found = net.forward_intermediates(image, indices=unique, norm=True, return_prefix_tokens=True,
                                              intermediates_only=True)
            by_block = dict(zip(unique, found, strict=True))
            return self.neck([by_block[i] for i in self.taps])
        return self.neck(net.forward_intermediates(image, norm=True, intermediates_only=True))

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """`out`: depth (B, 1, H, W) in metres or logits (B, K, H, W); `aux`: auxiliary logits
        (training only, UperNet)."""
        size = tuple(image.shape[-2:])
        if self.spec.kind == "glpdepth":
            return {"out": self.head(self.last_stage(image), size)}
        feats = self.pyramid(image)
        out = {"out": self.head(feats, size)}
        if self.aux_head is not None and self.training:
            out["aux"] = self.aux_head(feats[2], size)
        return out

    def no_weight_decay_names(self) -> set[str]:
        """Norms, biases and position tables (and the mask token, if a checkpoint had one)."""
        keywords = ("pos_embed", "cls_token", "reg_token", "relative_position_bias_table",
                    "absolute_pos_embed", "logit_scale", "cpb_mlp", "mask_token")
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or any(k in n for k in keywords)}

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise LR decay (BEiT/SimMIM): 0 for the patch embedding
        and position tables, block k (counted over all stages) → k + 1, a Swin patch merging with
        the last block before it, everything else (final norm, neck, head, a shared relative
        position bias) num_layers + 1. timm merges at the start of a stage, SimMIM's Swin at the
        end of the previous one, which `get_swin_layer` puts with that stage's last block."""
        if not name.startswith("backbone."):
            return self.num_layers + 1
        parts = name.split(".")[1:]
        if parts[0] in ("patch_embed", "cls_token", "reg_token", "pos_embed", "absolute_pos_embed",
                        "mask_token", "norm_pre"):
            return 0
        if self.is_vit and parts[0] == "blocks":
            return int(parts[1]) + 1
        if not self.is_vit and parts[0] == "layers":
            stage = int(parts[1])
            first = sum(self.depths[:stage])
            if parts[2] == "blocks":
                return first + int(parts[3]) + 1
            return first                                     # downsample: with the previous block
        return self.num_layers + 1

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k[len("backbone."):]: v for k, v in self.state_dict().items() if k.startswith("backbone.")}
