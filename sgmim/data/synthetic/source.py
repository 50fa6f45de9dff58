"""Procedural scenes of a seed range as a dataset source: rendered once, then served from a
shared-memory cache that every DataLoader worker sees."""

from __future__ import annotations

import numpy as np

from sgmim.data.cache import SharedCache
from sgmim.data.synthetic.scene import render_scene
from sgmim.spec.data import SyntheticConfig

# Scene attribute → (channels, dtype) of its per-pixel array; None = a single (H, W) plane.
SCENE_ARRAYS = {"rgb": (3, np.uint8), "depth": (None, np.float32), "pseudo_depth": (None, np.float32),
                "label": (None, np.uint8)}


class CachedScenes:
    """`get(i)` gives the scene of `seeds[i]` as {output name: array}, for the attributes named
    in `fields` ({output name: Scene attribute})."""

    def __init__(self, seeds: range, size: tuple[int, int], synthetic: SyntheticConfig,
                 fields: dict[str, str]):
        self.seeds, self.size, self.synthetic, self.fields = seeds, size, synthetic, fields
        h, w = size
        spec = {}
        for name, attribute in fields.items():
            channels, dtype = SCENE_ARRAYS[attribute]
            spec[name] = ((h, w) if channels is None else (h, w, channels), dtype)
        self.cache = SharedCache(len(seeds), spec, synthetic.cache_mb << 20)

    def __len__(self) -> int:
        return len(self.seeds)

    def name(self, index: int) -> str:
        return f"scene_{self.seeds[index]:010d}"

    def _render(self, index: int) -> dict[str, np.ndarray]:
        scene = render_scene(self.seeds[index], self.size, self.synthetic.pseudo_depth,
                             self.synthetic.num_objects)
        return {name: getattr(scene, attribute) for name, attribute in self.fields.items()}

    def get(self, index: int) -> dict[str, np.ndarray]:
        return self.cache.get(index, self._render)
