"""Regional compilation: torch.compile each repeated block and each piece of glue between them
on its own, instead of the whole model.

A Swin-B has 24 blocks of 8 distinct shapes (4 stages, shifted or not); compiled one by one,
blocks of one shape share their compiled code, so compile time grows with the distinct shapes,
not the depth. The glue is compiled too, each piece once: the patch merging between stages,
SG-MIM's depth extractor (the MLP one; the others are made of blocks), its depth target and the
two reconstruction losses. Left eager, that glue ran a kernel per operation over activations
as large as the first stage's, and made the SG-MIM branch slower than its FLOPs.
"""

from __future__ import annotations

import torch
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
from timm.models.swin_transformer_v2 import PatchMerging as PatchMergingV2
from timm.models.swin_transformer_v2 import SwinTransformerV2Block
from timm.models.vision_transformer import Block as ViTBlock
from torch import nn

from sgmim.models.guidance import FusionBlock, MLPExtractor
from sgmim.models.losses import DepthTarget, MaskedReconstructionLoss

REPEATED_BLOCKS = (SwinTransformerBlock, SwinTransformerV2Block, ViTBlock, FusionBlock)
GLUE = (PatchMerging, PatchMergingV2, MLPExtractor, DepthTarget, MaskedReconstructionLoss)
REGIONS = REPEATED_BLOCKS + GLUE
# Every distinct block shape is one more compiled variant of the same code; torch's default
# limit (8) would send the rest of a Swin-B back to eager mode.
MIN_RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = MIN_RECOMPILE_LIMIT) -> None:
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, then the older
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), limit))


def regions(model: nn.Module) -> list[nn.Module]:
    """The outermost region modules of `model`: a region inside another (the MLP extractor's
    patch merging) is compiled as part of it, not a second time."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        if isinstance(module, REGIONS):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


def compile_regions(model: nn.Module, backend: str = "inductor", mode: str = "default") -> int:
    """Compile every region of `model` in place; returns how many. `mode`: torch.compile's
    (with reduce-overhead each region replays as a CUDA graph: the caller marks each step's
    start, `mark_step`)."""
    raise_recompile_limit()
    found = regions(model)
    for region in found:
        # Static shapes: with automatic dynamic shapes the second stage's shape turns the block
        # symbolic, and inductor (torch 2.11, H200) fails on the window padding's index math
        # (CantSplit) and falls back to eager after minutes of trying (docs/notes.md).
        region.compile(backend=backend, dynamic=False, mode=mode)
    return len(found)


def uses_cuda_graphs(mode: str, on_gpu: bool) -> bool:
    return mode == "reduce-overhead" and on_gpu


def mark_step() -> None:
    """Tell CUDA graph replay that a new step starts: the previous step's graph outputs are no
    longer read, so the next replay may write over them."""
    torch.compiler.cudagraph_mark_step_begin()
