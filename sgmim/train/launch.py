"""Commands that start a training run: one process in place, or N local processes (and M nodes)
through torchrun, which sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_* for every rank."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_count() -> int:
    """Visible NVIDIA GPUs, without importing torch: a supervisor must never initialise CUDA
    in its own process (the ranks it forks need it)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if shutil.which("nvidia-smi") is None:
        return 0
    done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in done.stdout.splitlines()) if done.returncode == 0 else 0


@dataclass(frozen=True)
class Launch:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = field(default_factory=free_port)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def command(spec_path: Path, run_dir: Path, launch: Launch) -> list[str]:
    """The argv of one node's launcher (no `--local_rank`: ranks come from the environment)."""
    entry = ["-m", "sgmim.train", str(spec_path), "--run-dir", str(run_dir)]
    if launch.world_size == 1:
        return [sys.executable, *entry]
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc_per_node={launch.nproc_per_node}", f"--nnodes={launch.nnodes}",
            f"--node_rank={launch.node_rank}", f"--master_addr={launch.master_addr}",
            f"--master_port={launch.master_port}", "--max_restarts=0", *entry]


def rendezvous_command(
    spec_path: Path,
    run_dir: Path,
    launch: Launch,
    *,
    rdzv_id: str,
    is_host: bool,
    local_addr: str,
    join_timeout_s: int = 600,
) -> list[str]:
    """One node of a multi-node job started by its own box (no SSH): torchrun with the c10d
    rendezvous at `launch.master_addr:launch.master_port` (hosted by node 0: `is_host`), the id
    unique per job attempt so that a late node of an old attempt never joins a new one. The
    ranks reach this node at `local_addr`."""
    entry = ["-m", "sgmim.train", str(spec_path), "--run-dir", str(run_dir)]
    return [sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={launch.nproc_per_node}", f"--nnodes={launch.nnodes}",
            f"--node-rank={launch.node_rank}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={launch.master_addr}:{launch.master_port}", f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=is_host={str(is_host).lower()},join_timeout={int(join_timeout_s)}",
            f"--local-addr={local_addr}", "--max-restarts=0", *entry]


def environment(launch: Launch, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the launcher: unbuffered output, and on a CPU-only box the cores split
    between local ranks (two ranks on two cores each wanting every core is ~3× slower)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    if launch.world_size == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR=launch.master_addr,
                   MASTER_PORT=str(launch.master_port))
    if gpu_count() == 0:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // launch.nproc_per_node)))
        env.setdefault("DS_ACCELERATOR", "cpu")
    return env


def die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (PR_SET_PDEATHSIG).

    torchrun starts every rank in a session of its own, so a signal to the launcher's process
    group does not reach the ranks; and a supervisor killed with -9 cannot forward anything.
    Used as the launcher's `preexec_fn` and by every rank that torchrun started, so that no
    process of a run outlives the process that started it."""
    if not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


LAUNCHER_MODULES = ("torch.distributed.run", "torchrun")


def rank_dies_with_launcher() -> None:
    """For a rank that torchrun started: die with torchrun, and exit now when torchrun is
    already gone. The death signal only covers a parent that dies after it is set; a launcher
    killed while the rank was still starting leaves it adopted by another process (init, or
    the container's first process), and it would then train, alone and unseen, until its
    rendezvous timed out. Called before the rank imports anything heavy."""
    if not sys.platform.startswith("linux"):
        return
    die_with_parent()
    parent = os.getppid()
    try:
        argv = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    if not any(part.decode(errors="replace").endswith(LAUNCHER_MODULES) for part in argv):
        sys.stderr.write(f"sgmim.train: the rank's launcher (torchrun) is gone (its parent is now "
                         f"process {parent}); exiting\n")
        sys.stderr.flush()
        os._exit(1)
