"""A few local SG-MIM and SimMIM steps on one synthetic batch: the model in ten seconds."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from sgmim.models import SGMIM, EncoderConfig, GuidanceConfig, MaskConfig, ModelConfig

TINY_SWIN = EncoderConfig(timm_name="swin_tiny_patch4_window7_224", img_size=64, window_size=4,
                          embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8])


def synthetic_batch(size: int, batch_size: int, seed: int = 0):
    """Smooth random images with a depth map that shares their structure."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch_size, 4, size // 8, size // 8, generator=g)
    fields = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    return fields[:, :3], torch.sigmoid(fields[:, 3:])


def run_local_demo(steps: int) -> None:
    console = Console()
    image, depth = synthetic_batch(TINY_SWIN.img_size, batch_size=8)
    table = Table(title=f"tiny Swin, {steps} AdamW steps on one synthetic batch")
    for column in ("method", "first loss_img", "last loss_img", "last loss_struct"):
        table.add_column(column)
    for guided in (True, False):
        torch.manual_seed(0)
        config = ModelConfig(encoder=TINY_SWIN, mask=MaskConfig(mask_patch_size=16),
                             guidance=GuidanceConfig(enabled=guided, fusion_heads=4))
        model = SGMIM(config)
        image_mask, struct_mask = model.mask_generator().batch(image.shape[0], seed=0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
        first = None
        for step in range(steps):
            out = model(image, depth, image_mask, struct_mask)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            first = first if first is not None else out.loss_image.item()
            struct = f" loss_struct {out.loss_struct.item():.4f}" if guided else ""
            console.print(f"[{'SG-MIM' if guided else 'SimMIM'}] step {step + 1:3d} "
                          f"loss {out.loss.item():.4f} loss_img {out.loss_image.item():.4f}{struct}")
        table.add_row("SG-MIM" if guided else "SimMIM", f"{first:.4f}",
                      f"{out.loss_image.item():.4f}",
                      f"{out.loss_struct.item():.4f}" if guided else "-")
    console.print(table)
