"""SG-MIM (and SimMIM, the same model with guidance off).

    image ─ mask M_I ─ encoder ─ I_F ─ image head ─ L_I on M_I
                                  │
    depth ─ mask M_S ─ extractor ─ S_F ─ fusion(I_F, S_F) ─ I_SF ─ structure head ─ L_S on M_S

    L = λ_I·L_I + λ_S·L_S
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sgmim.models.encoder import MaskedEncoder
from sgmim.models.guidance import EXTRACTORS, FusionBlock, visible_tokens
from sgmim.models.losses import DepthTarget, MaskedReconstructionLoss
from sgmim.models.masking import MaskGenerator
from sgmim.spec.model import ModelConfig


@dataclass
class SGMIMOutput:
    loss: torch.Tensor
    loss_image: torch.Tensor
    loss_struct: torch.Tensor | None
    pred_image: torch.Tensor            # (B, 3, H, W), the image target's space (normalised
                                        # pixels, locally normalised with loss.norm_target)
    pred_struct: torch.Tensor | None    # (B, 1, H, W), standardised-depth space


def pixel_shuffle_head(dim: int, stride: int, out_chans: int) -> nn.Sequential:
    """SimMIM's one-layer decoder: 1×1 conv to stride²·C channels, then PixelShuffle."""
    return nn.Sequential(nn.Conv2d(dim, stride ** 2 * out_chans, 1), nn.PixelShuffle(stride))


class SGMIM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = MaskedEncoder(config.encoder)
        dim, stride = self.encoder.out_dim, self.encoder.out_stride
        self.image_head = pixel_shuffle_head(dim, stride, 3)
        loss, patch = config.loss, self.encoder.patch_size
        self.image_loss = MaskedReconstructionLoss(
            patch, loss.norm_target.patch_size if loss.norm_target.enabled else None)
        self.guided = config.guidance.enabled
        if self.guided:
            g = config.guidance
            self.depth_target = DepthTarget(loss.depth_trim)
            self.struct_loss = MaskedReconstructionLoss(patch)
            h, w = self.encoder.out_grid
            self.extractor = EXTRACTORS[g.extractor](self.encoder)
            self.fusion = FusionBlock(dim, g.fusion_heads, g.fusion_mlp_ratio, h * w,
                                      g.position_embedding, g.attend_visible_only)
            self.struct_head = pixel_shuffle_head(dim, stride, 1)

    def mask_generator(self) -> MaskGenerator:
        m = self.config.mask
        return MaskGenerator(self.config.encoder.img_size, m.mask_patch_size,
                             self.encoder.patch_size, m.ratio, m.structured)

    def forward(self, image: torch.Tensor, depth: torch.Tensor | None,
                image_mask: torch.Tensor, struct_mask: torch.Tensor | None = None) -> SGMIMOutput:
        """image: (B, 3, H, W) normalised; depth: (B, 1, H, W);
        image_mask, struct_mask: (B, h, w) on the patch grid, 1 = masked."""
        lam = self.config.loss
        image_feat = self.encoder(image, image_mask)                      # I_F: (B, C, h', w')
        pred_image = self.image_head(image_feat)                          # (B, 3, H, W)
        loss_image = self.image_loss(pred_image, image, image_mask)
        if not self.guided:
            return SGMIMOutput(lam.lambda_image * loss_image, loss_image, None, pred_image, None)

        target = self.depth_target(depth)                                 # S: (B, 1, H, W)
        struct_feat = self.extractor(target, struct_mask)                 # S_F: (B, h', w', C)
        B, C, h, w = image_feat.shape
        visible = visible_tokens(struct_mask, self.encoder.out_stride // self.encoder.patch_size)
        fused = self.fusion(image_feat.flatten(2).transpose(1, 2), struct_feat.reshape(B, h * w, C),
                            visible)                                      # I_SF: (B, h'·w', C)
        pred_struct = self.struct_head(fused.transpose(1, 2).reshape(B, C, h, w))
        loss_struct = self.struct_loss(pred_struct, target, struct_mask)
        loss = lam.lambda_image * loss_image + lam.lambda_struct * loss_struct
        return SGMIMOutput(loss, loss_image, loss_struct, pred_image, pred_struct)

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names exempt from weight decay: norms, biases, position tables, mask token."""
        keywords = ("mask_token", "pos_embed", "cls_token",
                    "relative_position_bias_table", "absolute_pos_embed", "logit_scale", "cpb_mlp")
        return {n for n, p in self.named_parameters()
                if p.ndim <= 1 or any(k in n for k in keywords)}

    def timm_spec(self) -> tuple[str, dict]:
        """The plain timm model the encoder weights load into: (name, kwargs)."""
        return self.config.encoder.timm_name, dict(self.encoder.timm_kwargs)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return self.encoder.encoder_state_dict()
