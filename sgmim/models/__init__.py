from sgmim.models.config import (
    EncoderConfig,
    GuidanceConfig,
    LossConfig,
    MaskConfig,
    ModelConfig,
)
from sgmim.models.masking import MaskGenerator
from sgmim.models.sgmim import SGMIM, SGMIMOutput

__all__ = ["SGMIM", "SGMIMOutput", "EncoderConfig", "GuidanceConfig", "LossConfig",
           "MaskConfig", "MaskGenerator", "ModelConfig"]
