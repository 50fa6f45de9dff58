import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sgmim.spec.model import SIMMIM_VIT_LAYOUT

ROOT = Path(__file__).parents[2]
EXAMPLES = ROOT / "examples" / "jobs"

# Small variants of each backbone family (the shapes of tests/models, seconds on CPU).
_SWIN = {"img_size": 64, "window_size": 4, "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8]}
TINY = {
    "swin": ("swin_tiny_patch4_window7_224", _SWIN),
    "swinv2": ("swinv2_tiny_window8_256", _SWIN),
    "vit": ("vit_tiny_patch16_224", {"img_size": 64, "embed_dim": 64, "depth": 2, "num_heads": 2}),
    "simmim_vit": ("beit_base_patch16_224", {**SIMMIM_VIT_LAYOUT, "img_size": 64, "embed_dim": 64,
                                             "depth": 2, "num_heads": 2}),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def example(name: str, **patch) -> dict:
    """An example spec, with `a.b.c=value` style patches given as {"a.b.c": value}."""
    data = yaml.safe_load((EXAMPLES / name).read_text())
    for key, value in patch.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return data


def write_spec(data: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def sgmim_train(spec: Path, run_dir: Path, job_id: str | None = None, nproc: int = 1,
                timeout: float = 300, extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    """`sgmim train` as a user (or the worker, with SGMIM_JOB_ID) runs it; `extra_env`: variables
    added to its environment."""
    env = {k: v for k, v in os.environ.items() if k != "SGMIM_JOB_ID"}
    env.update(extra_env or {})
    if job_id:
        env["SGMIM_JOB_ID"] = job_id
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgmim.cli", "train", str(spec), "--run-dir", str(run_dir),
         "--nproc", str(nproc)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, cwd=ROOT,
        env=env)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out


def metric_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def safetensors_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())
