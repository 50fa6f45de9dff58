"""Disjoint scene-seed ranges per split, so train, val and test never share a scene."""

from __future__ import annotations

from sgmim.data.errors import DataError

SPLITS = ("train", "val", "test")
SEEDS_PER_SPLIT = 10**9


def split_seeds(split: str, first: int, count: int) -> range:
    """Seeds of `count` scenes of `split`, starting at offset `first` inside its range."""
    if split not in SPLITS:
        raise DataError(f"synthetic split {split!r}: expected one of {', '.join(SPLITS)}")
    if first + count > SEEDS_PER_SPLIT:
        raise DataError(f"synthetic seeds {first}..{first + count} leave the {split} range "
                        f"(each split has {SEEDS_PER_SPLIT} seeds)")
    base = SPLITS.index(split) * SEEDS_PER_SPLIT
    return range(base + first, base + first + count)
