"""The model section of the job spec: every architectural choice of docs/method.md is a field."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sgmim.spec.base import IntPair, StrictModel, TimmName

BackboneFamily = Literal["swin", "swinv2", "vit"]
_TIMM_FIELDS = ("img_size", "patch_size", "window_size", "embed_dim", "depths", "depth", "num_heads",
                "drop_path_rate")

# SimMIM's ViT (its config.py MODEL.VIT and the ViT-B pretraining config): no absolute position
# embedding, one relative position bias shared by all blocks, LayerScale initialised at 0.1 and
# the final LayerNorm on the tokens (no pooling norm). timm's BEiT builds exactly that, so these
# keyword arguments are added to every `beit*` name and travel in the export's metadata.
SIMMIM_VIT_LAYOUT = {"use_abs_pos_emb": False, "use_rel_pos_bias": False,
                     "use_shared_rel_pos_bias": True, "init_values": 0.1, "use_fc_norm": False}


def layout_kwargs(timm_name: str) -> dict:
    """The constructor arguments a name always gets: SimMIM's ViT layout for `beit*`."""
    return dict(SIMMIM_VIT_LAYOUT) if timm_name.startswith("beit") else {}


def backbone_family(timm_name: str) -> BackboneFamily:
    if timm_name.startswith("swinv2"):
        return "swinv2"
    if timm_name.startswith("swin"):
        return "swin"
    return "vit"


class EncoderFields(StrictModel):
    """A timm Swin / SwinV2 / ViT (`beit*`: SimMIM's ViT) named by its registry name plus the size
    fields that change it.
    Only fields that are set reach `timm.create_model`, so the named model's defaults stand for
    everything else."""

    timm_name: TimmName | None = Field(None, description="timm model name of a Swin, SwinV2 or ViT model",
                                  examples=["swin_base_patch4_window7_224", "swinv2_base_window8_256",
                                            "vit_base_patch16_224"])
    img_size: int | IntPair | None = None
    patch_size: int | None = Field(None, ge=1, le=64)
    window_size: int | None = Field(None, ge=1, le=64, description="Swin/SwinV2 only")
    embed_dim: int | None = Field(None, ge=8, le=4096)
    depths: list[int] | None = Field(None, min_length=1, max_length=8,
                                     description="Swin/SwinV2: blocks per stage")
    depth: int | None = Field(None, ge=1, le=64, description="ViT: number of blocks")
    num_heads: int | list[int] | None = None
    drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0)

    @field_validator("img_size")
    @classmethod
    def _check_size(cls, value):
        sides = (value,) if isinstance(value, int) else tuple(value or ())
        if any(not 16 <= s <= 4096 for s in sides):
            raise ValueError(f"img_size sides must lie in [16, 4096], got {value}")
        return value

    @model_validator(mode="after")
    def _check_family_fields(self):
        name = self.timm_name
        if name is None:
            return self
        if backbone_family(name) == "vit" and (self.window_size is not None or self.depths is not None):
            raise ValueError("window_size and depths are Swin fields; a ViT takes depth")
        if backbone_family(name) != "vit" and self.depth is not None:
            raise ValueError("depth is a ViT field; a Swin takes depths (one per stage)")
        return self

    def size_kwargs(self) -> dict:
        """The size fields that are set, as `timm.create_model` keyword arguments."""
        kwargs = {k: getattr(self, k) for k in _TIMM_FIELDS if getattr(self, k) is not None}
        for key in ("depths", "num_heads", "img_size"):
            if isinstance(kwargs.get(key), list | tuple):
                kwargs[key] = tuple(kwargs[key])
        return kwargs


class EncoderConfig(EncoderFields):
    """The pretraining encoder: a named model at a square input size."""

    timm_name: TimmName = Field(
        "swin_base_patch4_window7_224",
        description="timm model name of a Swin, SwinV2 or ViT model; beit_* is SimMIM's ViT (shared "
                    "relative position bias, no absolute position embedding, LayerScale 0.1)",
        examples=["swin_base_patch4_window7_224", "swinv2_base_window8_256",
                  "beit_base_patch16_224", "vit_base_patch16_224"],
    )
    img_size: int = Field(192, ge=16, le=4096)
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)

    @property
    def family(self) -> BackboneFamily:
        return backbone_family(self.timm_name)

    @property
    def effective_patch_size(self) -> int:
        """The patch size timm will use: the field, else the `patchN` in the name."""
        if self.patch_size is not None:
            return self.patch_size
        found = re.search(r"patch(\d+)", self.timm_name)
        if found:
            return int(found.group(1))
        if self.family != "vit":
            return 4
        raise ValueError(f"cannot tell the patch size of {self.timm_name!r}; set patch_size")

    def timm_kwargs(self) -> dict:
        """Constructor arguments for `timm.create_model(timm_name, **kwargs)`, head-less."""
        return {**layout_kwargs(self.timm_name), **self.size_kwargs(), "num_classes": 0}


class MaskConfig(StrictModel):
    """SimMIM mask generator plus SG-MIM's structured mask (1 = masked, everywhere)."""

    mask_patch_size: int = Field(32, ge=1, le=512)
    ratio: float = Field(0.6, gt=0.0, lt=1.0)
    structured: Literal["complementary", "random"] = Field(
        "complementary",
        description="complementary: M_S = 1 - M_I (the paper's selective guidance masking); "
                    "random: an independent mask at the same ratio (paper Table 6 ablation)",
    )


class GuidanceConfig(StrictModel):
    """The relational guidance framework; `enabled: false` is SimMIM."""

    enabled: bool = True
    extractor: Literal["mlp", "transformer", "siamese"] = Field(
        "mlp", description="structured-feature extractor, paper Table 5")
    fusion_heads: int = Field(8, ge=1, le=64)
    fusion_mlp_ratio: float = Field(4.0, gt=0.0, le=16.0)
    position_embedding: bool = Field(
        False, description="one learned absolute position table added to both fusion streams "
                           "(the authors' later sparse-ResNet code; the paper and its code have none)")
    attend_visible_only: bool = Field(
        False, description="fusion keys/values only from structured tokens that see visible depth "
                           "(the authors' later code); false: from every S_F token, as the paper's "
                           "code")


class NormTargetConfig(StrictModel):
    """SimMIM's normalised pixel target (`NORM_TARGET`, on in its SwinV2 configs): each pixel of
    the image target standardised by the mean and variance of its `patch_size`² neighbourhood."""

    enabled: bool = False
    patch_size: int = Field(47, ge=3, le=255, description="odd window side (SimMIM: 47)")

    @model_validator(mode="after")
    def _odd(self) -> NormTargetConfig:
        if self.patch_size % 2 == 0:
            raise ValueError(f"patch_size {self.patch_size} must be odd (a window centred on each pixel)")
        return self


class LossConfig(StrictModel):
    lambda_image: float = Field(1.0, ge=0.0)
    lambda_struct: float = Field(1.0, ge=0.0)
    depth_trim: float = Field(
        0.1, ge=0.0, lt=0.5,
        description="fraction dropped at each end before standardising the depth target")
    norm_target: NormTargetConfig = Field(
        NormTargetConfig(), description="normalise the image reconstruction target locally (any backbone)")


class ModelConfig(StrictModel):
    encoder: EncoderConfig = EncoderConfig(window_size=6)  # Swin-B/192/window 6, the paper's
    mask: MaskConfig = MaskConfig()
    guidance: GuidanceConfig = GuidanceConfig()
    loss: LossConfig = LossConfig()

    @model_validator(mode="after")
    def _check_mask_grid(self) -> ModelConfig:
        size, cell = self.encoder.img_size, self.mask.mask_patch_size
        if size % cell:
            raise ValueError(f"encoder.img_size {size} is not a multiple of "
                             f"mask.mask_patch_size {cell}")
        patch = self.encoder.effective_patch_size
        if cell % patch:
            raise ValueError(f"mask.mask_patch_size {cell} is not a multiple of the encoder's "
                             f"patch size {patch}")
        cells = (size // cell) ** 2
        if cells < 2:
            raise ValueError(f"mask grid has {cells} cell; need at least 2 to mask some and "
                             "keep some visible")
        return self
