"""Write procedural scenes to disk in the image-folder layout.

`images/` RGB PNGs, `depth/` pseudo-depth (16-bit, value / 65535: the structured knowledge of
pretraining), `gt_depth/` exact z-depth (16-bit, value / 1000 = metres), `labels/` semantic
classes (8-bit, see `classes` in meta.json). The folder serves pretraining (`image_folder`)
and fine-tuning (`folder`) alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from sgmim.data.io import write_png, write_png16, write_unit_png16
from sgmim.data.synthetic.layout import CLASS_NAMES
from sgmim.data.synthetic.scene import render_scene
from sgmim.data.synthetic.splits import split_seeds
from sgmim.spec.data import PseudoDepthConfig

GT_DEPTH_SCALE = 1000.0


def _write_one(seed: int, out: Path, size: tuple[int, int], pseudo: PseudoDepthConfig) -> str:
    scene = render_scene(seed, size, pseudo)
    name = f"scene_{seed:010d}.png"
    write_png(out / "images" / name, scene.rgb)
    write_unit_png16(out / "depth" / name, scene.pseudo_depth)
    write_png16(out / "gt_depth" / name, np.round(scene.depth * GT_DEPTH_SCALE))
    write_png(out / "labels" / name, scene.label)
    return name


def write_synthetic_dataset(out: str | Path, count: int, size: tuple[int, int], split: str = "train",
                            first: int = 0, workers: int = 1, pseudo: PseudoDepthConfig | None = None,
                            on_progress: Callable[[], None] | None = None) -> Path:
    """Render `count` scenes of `split` (seeds from offset `first`) into `out`; returns `out`."""
    out = Path(out)
    seeds = split_seeds(split, first, count)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"generator": "sgmim.data.synthetic", "split": split, "first_seed": seeds.start,
            "count": count, "size": list(size), "classes": list(CLASS_NAMES),
            "depth": "pseudo inverse depth, 16-bit PNG, value / 65535, 1 = near",
            "gt_depth_scale": GT_DEPTH_SCALE}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    write = partial(_write_one, out=out, size=size, pseudo=pseudo or PseudoDepthConfig())
    tick = on_progress or (lambda: None)
    if workers <= 1:
        for seed in seeds:
            write(seed)
            tick()
        return out
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(write, seeds, chunksize=4):
            tick()
    return out
