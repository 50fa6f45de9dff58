"""SG-MIM model library. Names load lazily, so that importing the spec schema
(`sgmim.models.config`) does not import torch and timm."""

from importlib import import_module

_EXPORTS = {
    "EncoderConfig": "sgmim.models.config",
    "GuidanceConfig": "sgmim.models.config",
    "LossConfig": "sgmim.models.config",
    "MaskConfig": "sgmim.models.config",
    "ModelConfig": "sgmim.models.config",
    "MaskGenerator": "sgmim.models.masking",
    "SGMIM": "sgmim.models.sgmim",
    "SGMIMOutput": "sgmim.models.sgmim",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sgmim.models' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
