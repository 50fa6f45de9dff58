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


# For runs side by side: one thread per rank. Two runs that each take every core of a 2-core box
# thrash (the threads of one wait for those of the other): two runs then take twice as long as
# one after the other.
SIDE_BY_SIDE = {"OMP_NUM_THREADS": "1"}


def start_training(spec: Path, run_dir: Path, nproc: int = 1,
                   extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """`sgmim train` as a user runs it, in its own session so a test can kill the whole group;
    `extra_env`: variables added to its environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "sgmim.cli", "train", str(spec), "--run-dir", str(run_dir),
         "--nproc", str(nproc)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        cwd=ROOT, env={**os.environ, **(extra_env or {})})


def train(spec: Path, run_dir: Path, nproc: int = 1, timeout: float = 300,
          extra_env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = start_training(spec, run_dir, nproc, extra_env)
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
