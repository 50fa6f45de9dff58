"""SG-MIM model library: masks, the encoder, the guidance branch, heads and losses. The model's
configuration is a section of the job spec (`sgmim.spec.model`)."""

from sgmim.models.masking import MaskGenerator
from sgmim.models.sgmim import SGMIM, SGMIMOutput

__all__ = ["SGMIM", "MaskGenerator", "SGMIMOutput"]
