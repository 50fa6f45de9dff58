"""Split files as BTS and GLPDepth write them: one sample per line,
`<image path> <ground-truth path> [focal]`, paths relative to the dataset root (or to one of
the folders a dataset conventionally keeps them in). A ground truth of `None` means none.

Errors name the file and line numbers, never a line's text: a split file may be any file the
spec names, and the error reaches the job's `error` and logs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sgmim.data.errors import DataError, SkipPolicy, log


@dataclass(frozen=True)
class Entry:
    image: Path
    target: Path


def find_split_file(root: Path, split: str, defaults: dict[str, str]) -> Path:
    """`split` as a path (absolute, or relative to root), else the dataset's default file for a
    name. Never relative to the working directory."""
    given = Path(split).expanduser()
    candidates = [given] if given.is_absolute() else []
    candidates.append(root / split)
    if split in defaults:
        candidates.append(root / defaults[split])
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    names = ", ".join(sorted(defaults))
    raise DataError(f"split {split!r}: no split file at {' or '.join(str(c) for c in candidates)}; "
                    f"expected a split-file path or one of {names} with its file under {root}")


def _resolve(root: Path, relative: str, bases: tuple[str, ...], last: list[str]) -> Path | None:
    """The first `root/base/relative` that exists and stays under root (no `..` out of it);
    `last` remembers the base that worked, which is almost always the next line's too."""
    relative = relative.lstrip("/")
    top = os.path.realpath(root)
    for base in dict.fromkeys(last + list(bases)):
        path = root / base / relative
        if path.is_file() and os.path.realpath(path).startswith(top.rstrip(os.sep) + os.sep):
            last[:] = [base]
            return path
    return None


def read_split_file(path: Path, root: Path, image_bases: tuple[str, ...], target_bases: tuple[str, ...],
                    policy: SkipPolicy) -> list[Entry]:
    """Entries whose image and ground truth exist; lines without ground truth are left out and
    lines whose files are missing are reported (an error in strict mode)."""
    entries, missing, no_target = [], [], 0
    image_base, target_base = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected '<image path> <ground-truth path> [focal]', "
                            f"got a line of {len(parts)} field")
        if parts[1] == "None":
            no_target += 1
            continue
        image = _resolve(root, parts[0], image_bases, image_base)
        target = _resolve(root, parts[1], target_bases, target_base)
        if image is None or target is None:
            missing.append(f"line {number}")
        else:
            entries.append(Entry(image, target))
    if no_target:
        log.info("%s: %d lines have no ground truth ('None') and are left out", path, no_target)
    tried = ", ".join(str(root / b) for b in dict.fromkeys(image_bases + target_bases))
    policy.report_missing(f"lines of {path}", missing, f"their files under one of {tried}")
    if not entries:
        raise DataError(f"{path}: no line names an image and a ground truth that exist under {root}")
    return entries


class SplitFileSource:
    """Base of the sources listed by a split file: `entries` (image, target) under `root`."""

    tasks = ("depth",)

    def __init__(self, root: Path, split_file: Path, image_bases: tuple[str, ...],
                 target_bases: tuple[str, ...], policy: SkipPolicy, limit: int | None = None):
        self.entries = read_split_file(split_file, root, image_bases, target_bases, policy)[:limit]
        self.root = root

    def __len__(self) -> int:
        return len(self.entries)

    def name(self, index: int) -> str:
        return str(self.entries[index].image.relative_to(self.root))
