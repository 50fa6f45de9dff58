"""Rendering speed of the procedural scenes, one process:
`python -m sgmim.data.synthetic.bench [SIZE ...]` (default 64 and 192)."""

from __future__ import annotations

import sys
import time

from sgmim.data.synthetic.scene import render_scene

WARMUP = 3          # the first call loads the texture photographs
SECONDS = 10.0      # measure each size for about this long


def images_per_second(size: int, seconds: float = SECONDS) -> float:
    for seed in range(WARMUP):
        render_scene(seed, size)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        render_scene(count, size)
        count += 1
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    for size in [int(s) for s in sys.argv[1:]] or [64, 192]:
        print(f"{size}x{size}: {images_per_second(size):.1f} images/s (one process, RGB + depth + labels + "
              "pseudo-depth)")
