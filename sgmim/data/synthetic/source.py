"""Procedural scenes of a seed range as a dataset source: rendered once, then served from a
shared-memory cache that every DataLoader worker sees, and kept on disk for the next run.

The disk cache (`<cache root>/scenes/<key>/<seed>.npz`, see `sgmim.caches`) is what makes the
first epoch's render a cost paid once per dataset rather than once per run. Its key hashes
everything a scene depends on: the scene settings, the size, the fields kept and the renderer's
own source code; another setting is another folder, never a stale scene.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from functools import cache
from pathlib import Path

import numpy as np

from sgmim.caches import CACHE_ENV
from sgmim.data.cache import SharedCache
from sgmim.data.synthetic.scene import render_configured
from sgmim.spec.data import SyntheticConfig

log = logging.getLogger("sgmim.data")

# Scene attribute → (channels, dtype) of its per-pixel array; None = a single (H, W) plane.
SCENE_ARRAYS = {"rgb": (3, np.uint8), "depth": (None, np.float32), "pseudo_depth": (None, np.float32),
                "label": (None, np.uint8)}


@cache
def renderer_digest() -> str:
    """A hash of the renderer's source: a change to how scenes are drawn invalidates the cache."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def scene_cache_key(synthetic: SyntheticConfig, size: tuple[int, int], fields: dict[str, str]) -> str:
    """Everything a rendered scene depends on but its seed (the seed names the file)."""
    settings = {"num_objects": list(synthetic.num_objects),
                "geometry": synthetic.geometry.model_dump(mode="json"),
                "pseudo_depth": synthetic.pseudo_depth.model_dump(mode="json"),
                "size": list(size), "fields": sorted(fields.values()), "renderer": renderer_digest()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]


class SceneDiskCache:
    """One `.npz` per seed; written atomically, so concurrent workers and runs only ever see
    whole files (two writers of one seed write the same bytes)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, seed: int) -> Path:
        return self.folder / f"{seed:010d}.npz"

    def read(self, seed: int) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.path(seed), allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:  # a damaged file: render it again
            log.warning("scene cache file %s unreadable (%s); rendering it again", self.path(seed), exc)
            return None

    def write(self, seed: int, arrays: dict[str, np.ndarray]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, self.path(seed))
        except OSError as exc:  # a full or read-only disk costs speed, not the run
            log.warning("cannot write the scene cache in %s: %s", self.folder, exc)


def disk_cache_for(synthetic: SyntheticConfig, size: tuple[int, int],
                   fields: dict[str, str]) -> SceneDiskCache | None:
    """The disk cache of these settings under $SGMIM_CACHE_DIR, which the trainer sets for its
    run (None outside a run, or with `synthetic.disk_cache: false`)."""
    root = os.environ.get(CACHE_ENV)
    if not synthetic.disk_cache or not root:
        return None
    return SceneDiskCache(Path(root) / "scenes" / scene_cache_key(synthetic, size, fields))


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
        self.disk = disk_cache_for(synthetic, size, fields)

    def __len__(self) -> int:
        return len(self.seeds)

    def name(self, index: int) -> str:
        return f"scene_{self.seeds[index]:010d}"

    def _render(self, index: int) -> dict[str, np.ndarray]:
        seed = self.seeds[index]
        if self.disk is not None and (arrays := self.disk.read(seed)) is not None:
            return arrays
        scene = render_configured(seed, self.size, self.synthetic)
        arrays = {name: getattr(scene, attribute) for name, attribute in self.fields.items()}
        if self.disk is not None:
            self.disk.write(seed, arrays)
        return arrays

    def get(self, index: int) -> dict[str, np.ndarray]:
        return self.cache.get(index, self._render)
