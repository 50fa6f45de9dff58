"""The data layer: synthetic RGB-D scenes, on-disk dataset formats and structured knowledge.

- `build_pretrain_dataset`: image + structured-knowledge map + masks, for SG-MIM pretraining.
- `build_downstream_dataset`: image + metric depth or class labels, for fine-tuning/evaluation.
- `render_scene`: one procedural RGB-D scene (RGB, depth, labels, instances, pseudo-depth).

Names load lazily, so that importing the spec schema (`sgmim.data.config`) stays light.
"""

from importlib import import_module

_EXPORTS = {
    **dict.fromkeys(["AugmentConfig", "DownstreamDataConfig", "PretrainDataConfig",
                     "PseudoDepthConfig", "SyntheticConfig"], "sgmim.data.config"),
    **dict.fromkeys(["DATASET_INFO", "DatasetInfo", "DownstreamDataset", "build_downstream_dataset",
                     "pad_collate"], "sgmim.data.downstream"),
    "DataError": "sgmim.data.errors",
    **dict.fromkeys(["PretrainDataset", "build_pretrain_dataset"], "sgmim.data.pretrain"),
    **dict.fromkeys(["CLASS_NAMES", "SPLITS", "Scene", "render_scene"], "sgmim.data.synthetic"),
    **dict.fromkeys(["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"], "sgmim.data.transforms"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sgmim.data' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
