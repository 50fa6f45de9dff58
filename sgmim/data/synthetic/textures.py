"""Surface textures: real photographs bundled inside the scikit-image wheel.

Only files that ship in the wheel are used (`skimage/data/*.png|jpg`); scikit-image fetches
its other samples with pooch at run time, which must never happen here. They are read from
the package folder directly, not through `skimage.data.<name>()`, so no fetcher can run.
"""

from __future__ import annotations

import importlib.resources
from functools import lru_cache

import numpy as np
from PIL import Image

# Greyscale photographs (tinted per surface) and colour ones, all bundled in scikit-image 0.2x.
GREY_TEXTURES = ("brick.png", "grass.png", "gravel.png", "camera.png", "coins.png", "moon.png",
                 "page.png", "text.png")
COLOUR_TEXTURES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                   "ihc.png", "retina.jpg", "hubble_deep_field.jpg", "color.png")
TEXTURE_SIZE = 256


def _load(name: str, size: int) -> np.ndarray:
    """Centre square crop of a bundled photo, resized: (size, size, 3) float32 in [0, 1]."""
    with importlib.resources.as_file(importlib.resources.files("skimage.data") / name) as path:
        if not path.is_file():
            raise FileNotFoundError(f"scikit-image sample {name} is not bundled at {path}")
        with Image.open(path) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
            return np.asarray(image, dtype=np.float32) / 255.0


@lru_cache(maxsize=1)
def texture_bank(size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All textures once per process: (K, size, size, 3) float32 and a (K,) bool `is_grey`."""
    names = GREY_TEXTURES + COLOUR_TEXTURES
    bank = np.stack([_load(name, size) for name in names])
    return bank, np.array([name in GREY_TEXTURES for name in names])


def sample_bilinear(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Tile `texture` (T, T, 3) and read it at texel coordinates (u, v) (N,): (N, 3)."""
    size = texture.shape[0]
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32)[:, None], (v - v0).astype(np.float32)[:, None]
    x0, y0 = u0.astype(np.int64) % size, v0.astype(np.int64) % size
    x1, y1 = (x0 + 1) % size, (y0 + 1) % size
    top = texture[y0, x0] * (1 - fu) + texture[y0, x1] * fu
    bottom = texture[y1, x0] * (1 - fu) + texture[y1, x1] * fu
    return top * (1 - fv) + bottom * fv
