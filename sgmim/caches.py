"""Where a run keeps what outlives it: compiled kernels and rendered synthetic scenes.

A service run dir is `<artifact_root>/jobs/<id>/`, so its caches go to `<artifact_root>/cache/`
and a second attempt, or the next job of the same shape, finds them. A run elsewhere
(`sgmim train --run-dir DIR`) uses `$XDG_CACHE_HOME/sgmim` (default `~/.cache/sgmim`).
`SGMIM_CACHE_DIR` overrides both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ENV = "SGMIM_CACHE_DIR"
# What torch.compile reads: inductor's generated code and Triton's compiled kernels.
COMPILER_CACHE_ENVS = {"TORCHINDUCTOR_CACHE_DIR": "inductor", "TRITON_CACHE_DIR": "triton"}


def cache_root(run_dir: Path | None = None) -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if run_dir is not None:
        run_dir = Path(run_dir).resolve()
        if run_dir.parent.name == "jobs":
            return run_dir.parent.parent / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sgmim"


def use_cache_root(run_dir: Path) -> Path:
    """Point this process (and the loader workers and compile workers it starts) at the run's
    cache root; compiler settings the user exported are kept."""
    root = cache_root(run_dir)
    os.environ[CACHE_ENV] = str(root)
    for name, sub in COMPILER_CACHE_ENVS.items():
        if name not in os.environ or _torch_default(name):
            os.environ[name] = str(root / sub)
    return root


def _torch_default(name: str) -> bool:
    """Whether the variable holds torch's own default rather than the user's choice: importing
    torch._dynamo (timm does) writes inductor's default directory into the environment."""
    utils = sys.modules.get("torch._inductor.runtime.cache_dir_utils")
    if name != "TORCHINDUCTOR_CACHE_DIR" or utils is None:
        return False
    return os.path.abspath(os.environ[name]) == os.path.abspath(utils.default_cache_dir())
