"""Dense-prediction heads on top of a Swin/SwinV2/ViT encoder (docs/method.md "Downstream")."""

from sgmim.models.heads.dpt import DPTHead
from sgmim.models.heads.glpdepth import GLPDepthHead
from sgmim.models.heads.pyramid import SwinPyramid, ViTPyramid
from sgmim.models.heads.upernet import FCNHead, UperNetHead

__all__ = ["DPTHead", "FCNHead", "GLPDepthHead", "SwinPyramid", "UperNetHead", "ViTPyramid"]
