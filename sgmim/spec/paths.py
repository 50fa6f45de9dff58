"""The files and folders a job spec points at on the worker's disk, and the check that each lies
under the data roots a deployment allows (`SGMIM_DATA_ROOTS`): a token holder must not make the
trainer read arbitrary files of the worker host.

The API checks the paths as written (`resolve=False`: its host may not have the data); the
worker checks them again with symlinks resolved, just before it launches the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PATH_NOT_ALLOWED = "path_not_allowed"  # the API's error type for these

def data_paths(spec: Any) -> list[tuple[str, str]]:
    """(field path, path) of every file or folder the spec names: data.root, split files (a
    split that is not a bare name, taken under data.root when relative), init_path (init: file)."""
    config = spec.config
    found: list[tuple[str, str]] = []
    data = getattr(config, "data", None)
    root = getattr(data, "root", None)
    if root:
        found.append(("config.data.root", root))
    splits = [(f"config.data.{name}", getattr(data, name, None)) for name in ("train_split", "val_split")]
    if spec.kind == "evaluate":
        splits.append(("config.split", config.split))
    for field, split in splits:
        if split and _is_split_path(split):
            path = os.path.expanduser(split)
            found.append((field, path if os.path.isabs(path) or not root else os.path.join(root, path)))
    if getattr(config, "init", None) == "file" and config.init_path:
        found.append(("config.init_path", config.init_path))
    return found


def _is_split_path(split: str) -> bool:
    """A split names a file when it is more than a bare name (`train`, `eigen_test`)."""
    return os.sep in split or "/" in split or split.startswith(("~", ".")) or "." in split


def paths_outside(spec: Any, roots: Sequence[Path], resolve: bool) -> list[tuple[str, str]]:
    """(field path, message) for each data path that is relative or not under one of `roots`
    (`resolve`: with symlinks resolved, as the worker sees them)."""
    fix = os.path.realpath if resolve else os.path.normpath
    allowed = [fix(str(root)) for root in roots]
    errors = []
    for field, value in data_paths(spec):
        path = os.path.expanduser(value)
        if not os.path.isabs(path):
            errors.append((field, f"{value!r} must be an absolute path (or start with ~)"))
        elif not any(_under(fix(path), root) for root in allowed):
            errors.append((field, f"{value!r} is not under a data root this server allows "
                                  f"({', '.join(allowed)}; SGMIM_DATA_ROOTS)"))
    return errors


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)
