"""The image-folder pretraining loader against a plain loop, per core (issue 13).

    .venv/bin/python benchmarks/loader_bench.py [--images 200] [--rounds 5] [--size 192]

Writes a folder of JPEG photos (500 × 375, ImageNet's typical size, quality 90) with 16-bit PNG
depth maps beside them, then times, in one process and alternating round by round:

- ours: `build_pretrain_dataset(source: image_folder)` items, as a DataLoader worker makes them
  (decode both files, paired RandomResizedCrop + flip, masks; `data.transfer` compact, what
  a GPU run uses, and float32, what a CPU run uses);
- plain: PIL decode of both files, torchvision's RandomResizedCrop box applied to both
  (`resized_crop`, bilinear, antialias), the same flip, `to_tensor` + `normalize` of the image.

Reports images/s of each and the ratio ours / plain (median of the rounds, with min and max),
and writes the "Image-folder loader (CPU)" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._results import machine, write_section  # noqa: E402
from sgmim.data import build_pretrain_dataset  # noqa: E402
from sgmim.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from sgmim.models import MaskGenerator  # noqa: E402
from sgmim.spec import PretrainDataConfig  # noqa: E402

PHOTO = (375, 500)  # (H, W)


def write_folder(root: Path, count: int, seed: int = 0) -> None:
    """Photo-like content (smooth colour fields plus texture) so JPEG has real work to do."""
    rng = np.random.default_rng(seed)
    h, w = PHOTO
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        phase = rng.uniform(0, 6.28, 3)
        freq = rng.uniform(0.005, 0.05, 3)
        rgb = np.stack([127 + 100 * np.sin(freq[c] * (xx + 0.7 * yy) + phase[c]) for c in range(3)], -1)
        rgb += rng.normal(0, 12, rgb.shape)
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(root / "images" / f"{i:05d}.jpg",
                                                                    quality=90)
        depth = (np.sin(freq[0] * yy + phase[1]) + 1.2) / 2.2 * 65535
        Image.fromarray(depth.astype(np.uint16)).save(root / "depth" / f"{i:05d}.png", compress_level=1)


def plain_loop(root: Path, size: int, count: int, epoch: int) -> float:
    """Seconds for `count` samples of the plain torchvision loop."""
    from torchvision.transforms import RandomResizedCrop
    from torchvision.transforms import functional as TF

    torch.manual_seed(epoch)
    crop = RandomResizedCrop(size, scale=(0.67, 1.0))
    start = time.perf_counter()
    for i in range(count):
        image = Image.open(root / "images" / f"{i:05d}.jpg").convert("RGB")
        depth = np.asarray(Image.open(root / "depth" / f"{i:05d}.png"), dtype=np.float32) / 65535
        depth = torch.from_numpy(depth)[None]
        top, left, h, w = crop.get_params(image, crop.scale, crop.ratio)
        image = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
        depth = TF.resized_crop(depth, top, left, h, w, [size, size], antialias=True)
        if torch.rand(1) < 0.5:
            image, depth = TF.hflip(image), TF.hflip(depth)
        image = TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)
    return time.perf_counter() - start


def ours(root: Path, size: int, count: int, epoch: int, transfer: str) -> float:
    """Seconds for `count` items of the project's pretraining dataset (one process)."""
    cfg = PretrainDataConfig(source="image_folder", root=str(root), transfer=transfer)
    dataset = build_pretrain_dataset(cfg, size, MaskGenerator(size, 32, 4, 0.6))
    dataset.set_epoch(epoch)
    start = time.perf_counter()
    for i in range(count):
        dataset[i]
    return time.perf_counter() - start


def table_row(label: str, rates: list[float], ratios: list[float] | None) -> str:
    spread = f"{min(rates):.0f}–{max(rates):.0f}"
    vs = "1" if ratios is None else \
        f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"
    return f"| {label} | {statistics.median(rates):.0f} | {spread} | {vs} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core, as in a DataLoader worker
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        (root / "depth").mkdir()
        write_folder(root, args.images)
        runs = {"plain": lambda e: plain_loop(root, args.size, args.images, e),
                "compact": lambda e: ours(root, args.size, args.images, e, "compact"),
                "float32": lambda e: ours(root, args.size, args.images, e, "float32")}
        for run in runs.values():  # page cache and imports warm
            run(99)
        rates = {name: [] for name in runs}
        for r in range(args.rounds):
            for name, run in runs.items():
                rates[name].append(args.images / run(r))
    load_after = os.getloadavg()
    ratio = {name: [a / b for a, b in zip(rates[name], rates["plain"], strict=True)]
             for name in ("compact", "float32")}
    lines = [f"{name}: {statistics.median(v):.0f} img/s (rounds {min(v):.0f}-{max(v):.0f})"
             for name, v in rates.items()]
    lines += [f"ours ({name}) / plain: {statistics.median(v):.2f}x (rounds {min(v):.2f}-{max(v):.2f})"
              for name, v in ratio.items()]
    print("\n".join(lines))
    labels = {"plain": "plain: PIL decode + RandomResizedCrop (both) + flip + to_tensor + normalise",
              "compact": "ours, `data.transfer: compact` (auto with a GPU: uint8 image, float16 depth)",
              "float32": "ours, `data.transfer: float32` (auto without a GPU: normalised in the loader)"}
    rows = "\n".join(table_row(labels[name], rates[name], ratio.get(name)) for name in labels)
    body = f"""\
`python benchmarks/loader_bench.py --images {args.images} --rounds {args.rounds} --size {args.size}`,
{time.strftime('%Y-%m-%d')}, {machine()}, one thread (per core, as in one DataLoader worker).
Load average {load[0]:.1f} before and {load_after[0]:.1f} after: other developers share the 2
cores, so absolute figures move; the ratios come from rounds that alternate the loops.
{args.images} JPEG photos {PHOTO[1]}×{PHOTO[0]} (quality 90) + 16-bit PNG depth maps, output
{args.size}×{args.size}, crop scale (0.67, 1), flip 0.5.

| loop | img/s per core (median of {args.rounds} rounds) | rounds min–max | ours / plain (median, min–max) |
|---|---|---|---|
{rows}
"""
    if not args.no_results:
        write_section("Image-folder loader (CPU)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
