"""Write procedural scenes to disk in the image-folder layout.

`images/` RGB PNGs, `depth/` pseudo-depth (16-bit, value / 65535: the structured knowledge of
pretraining), `gt_depth/` exact z-depth (16-bit, value / 1000 = metres), `labels/` semantic
classes (8-bit, see `classes` in meta.json). The folder serves pretraining (`image_folder`)
and fine-tuning (`folder`) alike.

`meta.json` is the folder's manifest: the split, the seeds written and the `synthetic:` block
(a job spec's scene settings) they were rendered with. A folder holds the scenes of one split
and one set of settings, so that its manifest stays true: rendering more seeds into it adds to
`seeds`, rendering other settings into it is refused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from sgmim.data.errors import DataError
from sgmim.data.io import write_png, write_png16, write_unit_png16
from sgmim.data.synthetic.layout import CLASS_NAMES
from sgmim.data.synthetic.scene import render_configured
from sgmim.data.synthetic.splits import split_seeds
from sgmim.spec.data import SyntheticConfig

GT_DEPTH_SCALE = 1000.0
MANIFEST = "meta.json"
GENERATOR = "sgmim.data.synthetic"
# Settings of a `synthetic:` block that decide how it is kept, not what is drawn.
STORAGE_SETTINGS = {"cache_mb", "disk_cache"}


def _write_one(seed: int, out: Path, size: tuple[int, int], synthetic: SyntheticConfig) -> str:
    scene = render_configured(seed, size, synthetic)
    name = f"scene_{seed:010d}.png"
    write_png(out / "images" / name, scene.rgb)
    write_unit_png16(out / "depth" / name, scene.pseudo_depth)
    write_png16(out / "gt_depth" / name, np.round(scene.depth * GT_DEPTH_SCALE))
    write_png(out / "labels" / name, scene.label)
    return name


def scene_settings(synthetic: SyntheticConfig, size: tuple[int, int]) -> dict[str, Any]:
    """The `synthetic:` block of the scenes as a job spec takes it: everything that changes a
    rendered scene (its size included), nothing that only changes how it is cached."""
    settings = synthetic.model_copy(update={"render_size": size}).model_dump(mode="json")
    return {key: value for key, value in settings.items() if key not in STORAGE_SETTINGS}


def _differences(before: Any, now: Any, path: str) -> list[str]:
    """'path: before there, now here' for each leaf that differs between two JSON values."""
    if isinstance(before, dict) and isinstance(now, dict):
        found = []
        for key in sorted(before.keys() | now.keys()):
            found += _differences(before.get(key), now.get(key), f"{path}.{key}")
        return found
    return [] if before == now else [f"{path}: {json.dumps(before)} there, {json.dumps(now)} now"]


def _merge_ranges(ranges: list[list[int]]) -> list[list[int]]:
    """Sorted [start, stop) ranges with the overlapping and touching ones joined."""
    merged: list[list[int]] = []
    for start, stop in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return merged


def _earlier_seeds(path: Path, split: str, settings: dict[str, Any]) -> list[list[int]]:
    """The seed ranges an earlier render left in the folder of `path` (none without a manifest);
    a DataError when they were rendered otherwise, since one manifest cannot describe both."""
    if not path.exists():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or earlier.get("generator") != GENERATOR:
        raise DataError(f"{path} exists and is not a manifest of `sgmim data synth`; "
                        "render into another folder")
    if "synthetic" not in earlier or not _are_ranges(earlier.get("seeds")):
        raise DataError(f"{path} does not record the scenes' settings and seeds (an earlier sgmim "
                        "wrote it, or it was edited); render into another folder")
    differences = _differences(earlier.get("split"), split, "split") + _differences(
        earlier.get("synthetic"), settings, "synthetic")
    if differences:
        raise DataError(f"{path.parent} holds scenes rendered otherwise ({'; '.join(differences)}); "
                        "render into another folder")
    return earlier["seeds"]


def _are_ranges(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r) for r in value)


def write_manifest(out: Path, split: str, seeds: range, settings: dict[str, Any]) -> dict[str, Any]:
    """Write (or extend) `out/meta.json` for `seeds` rendered with `settings`; returns it."""
    path = out / MANIFEST
    ranges = _merge_ranges([*_earlier_seeds(path, split, settings), [seeds.start, seeds.stop]])
    manifest = {"generator": GENERATOR, "split": split, "seeds": ranges,
                "count": sum(stop - start for start, stop in ranges), "size": settings["render_size"],
                "synthetic": settings, "classes": list(CLASS_NAMES),
                "depth": "pseudo inverse depth, 16-bit PNG, value / 65535, 1 = near",
                "gt_depth_scale": GT_DEPTH_SCALE}
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def start_synthetic_dataset(out: str | Path, count: int, size: tuple[int, int], split: str,
                            first: int, synthetic: SyntheticConfig) -> range:
    """Check the seeds and the folder, write its manifest; returns the seeds to render. Every
    refusal (a bad seed range, a folder of other scenes) comes here, before any rendering."""
    out = Path(out)
    seeds = split_seeds(split, first, count)
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, split, seeds, scene_settings(synthetic, size))
    return seeds


def render_into(out: str | Path, seeds: range, size: tuple[int, int], synthetic: SyntheticConfig,
                workers: int = 1, on_progress: Callable[[], None] | None = None) -> None:
    """Render and write the scenes of `seeds`, in `workers` processes."""
    write = partial(_write_one, out=Path(out), size=size, synthetic=synthetic)
    tick = on_progress or (lambda: None)
    if workers <= 1:
        for seed in seeds:
            write(seed)
            tick()
        return
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(write, seeds, chunksize=4):
            tick()


def write_synthetic_dataset(out: str | Path, count: int, size: tuple[int, int], split: str = "train",
                            first: int = 0, workers: int = 1, synthetic: SyntheticConfig | None = None,
                            on_progress: Callable[[], None] | None = None) -> Path:
    """Render `count` scenes of `split` (seeds from offset `first`) at `size` with the scene
    settings of `synthetic` (default: a spec's defaults) into `out`; returns `out`."""
    synthetic = synthetic or SyntheticConfig()
    seeds = start_synthetic_dataset(out, count, size, split, first, synthetic)
    render_into(out, seeds, size, synthetic, workers, on_progress)
    return Path(out)
