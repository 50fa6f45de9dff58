"""Procedural RGB-D indoor scenes with exact depth, labels and pseudo-depth."""

from sgmim.data.synthetic.layout import CLASS_NAMES
from sgmim.data.synthetic.scene import Scene, render_scene
from sgmim.data.synthetic.splits import SPLITS, split_seeds

__all__ = ["CLASS_NAMES", "SPLITS", "Scene", "render_scene", "split_seeds"]
