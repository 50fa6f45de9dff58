"""Regional compilation: torch.compile each repeated block instead of the whole model.

A Swin-B has 24 blocks of 8 distinct shapes (4 stages, shifted or not); compiled one by one,
blocks of one shape share their compiled code, so compile time grows with the distinct shapes,
not the depth, and the glue between blocks (masking, heads, losses) stays eager.
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from timm.models.vision_transformer import Block as ViTBlock
from torch import nn

from sgmim.models.guidance import FusionBlock

REPEATED_BLOCKS = (SwinTransformerBlock, SwinTransformerV2Block, ViTBlock, FusionBlock)
# Every distinct block shape is one more compiled variant of the same code; torch's default
# limit (8) would send the rest of a Swin-B back to eager mode.
MIN_RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = MIN_RECOMPILE_LIMIT) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """Compile every repeated block of `model` in place; returns how many."""
    raise_recompile_limit()
    blocks = [m for m in model.modules() if isinstance(m, REPEATED_BLOCKS)]
    for block in blocks:
        # Static shapes: with automatic dynamic shapes the second stage's shape turns the block
        # symbolic, and inductor (torch 2.11, H200) fails on the window padding's index math
        # (CantSplit) and falls back to eager after minutes of trying (docs/notes.md).
        block.compile(backend=backend, dynamic=False)
    return len(blocks)
