"""Turn exact depth into what a monocular depth network would give: structured knowledge.

A network such as DPT/MiDaS predicts affine-invariant inverse depth: right up to an unknown
scale and shift, smooth, slightly wrong in large regions, with depth edges that do not sit
exactly on the image edges. Each of those failure modes is one step below, with its strength
set by `PseudoDepthConfig`; the result is normalised to [0, 1] with 1 = near.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sgmim.spec.data import PseudoDepthConfig


def _basis(length: int, cells: int) -> np.ndarray:
    """(length, cells) Gaussian bumps centred on `cells` evenly spaced knots, rows summing to 1."""
    knots = (np.arange(cells) + 0.5) / cells
    x = (np.arange(length) + 0.5) / length
    weights = np.exp(-0.5 * ((x[:, None] - knots[None, :]) * cells) ** 2)
    return weights / weights.sum(axis=1, keepdims=True)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a `cells`×`cells` random grid interpolated smoothly."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells))
    return _basis(shape[0], cells) @ coarse @ _basis(shape[1], cells).T


def misalign_edges(depth: np.ndarray, rng: np.random.Generator, amplitude_px: float) -> np.ndarray:
    """Warp by a smooth displacement field so depth edges drift off the image edges."""
    if amplitude_px <= 0:
        return depth
    rows, cols = np.indices(depth.shape, dtype=np.float32)
    dy = amplitude_px * smooth_field(rng, depth.shape, cells=5)
    dx = amplitude_px * smooth_field(rng, depth.shape, cells=5)
    return ndimage.map_coordinates(depth, [rows + dy, cols + dx], order=0, mode="nearest")


def pseudo_depth(depth: np.ndarray, rng: np.random.Generator, cfg: PseudoDepthConfig) -> np.ndarray:
    """(H, W) metric z-depth > 0 → (H, W) float32 pseudo inverse depth in [0, 1]."""
    side = max(depth.shape)
    depth = misalign_edges(depth, rng, cfg.edge_shift * side * rng.uniform(0.5, 1.0))
    inverse = 1.0 / depth
    # An additive shift makes the map inverse depth only up to an affine map, as predicted.
    inverse = inverse + cfg.shift * np.median(inverse) * rng.uniform(0.0, 1.0)
    sigma = cfg.blur * side * rng.uniform(0.5, 1.5)
    if sigma > 0:
        inverse = ndimage.gaussian_filter(inverse, sigma, mode="nearest")
    inverse = inverse * (1.0 + cfg.bias * smooth_field(rng, depth.shape, cells=3))
    span = np.ptp(inverse)
    unit = (inverse - inverse.min()) / (span if span > 0 else 1.0)
    unit = unit + cfg.noise * rng.standard_normal(unit.shape)
    # Random scale and shift inside [0, 1]: the map does not always span the full range.
    scale = rng.uniform(cfg.min_range, 1.0)
    unit = rng.uniform(0.0, 1.0 - scale) + scale * unit
    return np.clip(unit, 0.0, 1.0).astype(np.float32)
