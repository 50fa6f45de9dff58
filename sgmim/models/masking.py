"""Mask generation. One convention everywhere: 1 = masked (hidden from the network).

Masks are drawn per sample in the data pipeline (CPU, NumPy), as SimMIM does, so that each
sample's masks travel with it through the loader and the model stays free of RNG state.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch


class MaskGenerator:
    """SimMIM's generator plus SG-MIM's structured mask.

    The image is cut into `(img_size / mask_patch_size)²` cells; `ceil(ratio · cells)` of them
    are masked and the cell mask is upsampled to the encoder's patch grid.
    The structured mask is `1 - M_I` (complementary, the paper's selective guidance masking)
    or an independent draw at the same ratio (Table 6 "Random").
    """

    def __init__(self, img_size: int, mask_patch_size: int, model_patch_size: int,
                 ratio: float, structured: Literal["complementary", "random"] = "complementary"):
        if img_size % mask_patch_size or mask_patch_size % model_patch_size:
            raise ValueError(f"img_size {img_size}, mask_patch_size {mask_patch_size} and "
                             f"patch size {model_patch_size} must divide each other in turn")
        self.cells_per_side = img_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.num_cells = self.cells_per_side ** 2
        self.num_masked = math.ceil(ratio * self.num_cells)
        self.structured = structured

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        cells = np.zeros(self.num_cells, dtype=np.uint8)
        cells[rng.permutation(self.num_cells)[: self.num_masked]] = 1
        cells = cells.reshape(self.cells_per_side, self.cells_per_side)
        return cells.repeat(self.scale, axis=0).repeat(self.scale, axis=1)

    def __call__(self, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns `(image_mask, struct_mask)`, each (h, w) uint8 on the patch grid."""
        rng = rng or np.random.default_rng()
        image_mask = self._draw(rng)
        if self.structured == "complementary":
            return image_mask, 1 - image_mask
        return image_mask, self._draw(rng)

    def batch(self, batch_size: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`batch_size` independent draws stacked: two (B, h, w) tensors (tests, benchmarks)."""
        rng = np.random.default_rng(seed)
        pairs = [self(rng) for _ in range(batch_size)]
        image = torch.from_numpy(np.stack([p[0] for p in pairs]))
        struct = torch.from_numpy(np.stack([p[1] for p in pairs]))
        return image, struct


def upsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """(B, h, w) patch-grid mask → (B, 1, h·factor, w·factor) pixel mask."""
    return mask.repeat_interleave(factor, 1).repeat_interleave(factor, 2).unsqueeze(1)
