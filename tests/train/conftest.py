import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]
TINY_SPEC = ROOT / "examples" / "jobs" / "pretrain-tiny.yaml"


def tiny_spec(tmp_path: Path, name: str = "spec.yaml", **config_patch) -> Path:
    """The tiny example spec with `config` sections patched (dotted keys as nested dicts)."""
    data = yaml.safe_load(TINY_SPEC.read_text())
    for section, values in config_patch.items():
        data["config"].setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def start_training(spec: Path, run_dir: Path, nproc: int = 1) -> subprocess.Popen:
    """`sgmim train` as a user runs it, in its own session so a test can kill the whole group."""
    return subprocess.Popen(
        [sys.executable, "-m", "sgmim.cli", "train", str(spec), "--run-dir", str(run_dir),
         "--nproc", str(nproc)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        cwd=ROOT)


def train(spec: Path, run_dir: Path, nproc: int = 1, timeout: float = 300) -> tuple[int, str]:
    proc = start_training(spec, run_dir, nproc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc.returncode, out


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def metric_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
