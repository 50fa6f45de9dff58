"""Which processes a job starts, on which boxes: one launcher per node (single-node jobs, and
multi-node jobs with `multinode_launcher: ssh`; the default places multi-node jobs on
registered workers instead, each starting its own node: worker/gang.py).

A job asks for `resources.gpus` processes on each of `resources.nodes` boxes. The worker that
claims the job is node 0; it builds one launcher argv per node with `sgmim.train.launch`
(torchrun `--nproc_per_node G --nnodes M --node_rank r --master_addr <node 0> --master_port P`;
plain `python -m sgmim.train` for a 1-process job) and starts

- the launchers of *local* nodes itself, as subprocesses (loopback names, this box's host name
  and `node_addr` are local; a hostfile listing `127.0.0.1` twice runs a 2-node job on one box,
  which is how the tests exercise the multi-node path);
- the launcher of every other node over SSH: `<ssh_command> -tt <host> 'cd <cwd> && exec env
  K=V ... <argv>'`. `-tt` gives the remote command a terminal, so when node 0's supervisor
  kills the ssh client (cancel, failure, worker death: ssh is in the supervisor's process group
  and dies with it), sshd hangs up the remote session and the remote torchrun stops its ranks.

Which boxes: the hostfile (`SGMIM_HOSTFILE`, DeepSpeed's format: `host slots=N` per line, `#`
comments). Node 0 is the first local entry; nodes 1..M-1 are the following entries, in file
order, with at least `gpus` slots. A host may be listed more than once (each line is a node).

The alternative without SSH (DeepSpeed's `--no_ssh`, deploy/MULTINODE.md) is that every box
runs its own launcher with its own `--node_rank`; `NodeLaunch.argv` is exactly that command,
so an operator can start the other nodes by hand from `GET /jobs/{id}/logs` (the supervisor
logs each node's command). The default launcher does exactly that with the other boxes'
workers: each consumes its host's own queue, and a gang of free workers is reserved at once.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sgmim import rundir
from sgmim.train.launch import Launch, command, free_port

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "::1", "0.0.0.0"})
# Environment passed to a remote node's launcher (on top of REMOTE_KEYS): communication and
# threading knobs that must match across nodes.
REMOTE_ENV_PREFIXES = ("NCCL_", "GLOO_", "TORCH_", "OMP_", "DS_", "CUDA_")
REMOTE_KEYS = ("PYTHONUNBUFFERED", "PYTHONPATH",
               rundir.ENV_JOB_ID, rundir.ENV_ATTEMPT, rundir.ENV_LOG_TO_STDOUT)


class PlanError(ValueError):
    """The job cannot be placed: a readable reason for the job's `error`."""


@dataclass(frozen=True)
class HostEntry:
    host: str
    slots: int


@dataclass(frozen=True)
class NodeLaunch:
    node_rank: int
    host: str
    local: bool
    launch: Launch
    argv: tuple[str, ...]  # the launcher, as run on `host`

    def start_argv(self, ssh_command: str, env: dict[str, str], cwd: str) -> list[str]:
        """What node 0's supervisor runs to start this node: the argv itself for a local node,
        else ssh to the host with the relevant environment."""
        if self.local:
            return list(self.argv)
        return remote_argv(ssh_command, self.host, env, cwd, self.argv)


def parse_hostfile(text: str, source: str = "hostfile") -> list[HostEntry]:
    """DeepSpeed's hostfile format: `hostname slots=N` per line; blank lines and `#` comments."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        slots = None
        if len(parts) == 2 and parts[1].startswith("slots="):
            try:
                slots = int(parts[1].removeprefix("slots="))
            except ValueError:
                slots = None
        if slots is None or slots < 1:
            raise PlanError(
                f"{source} line {number}: expected `hostname slots=N` (N >= 1), got {raw.strip()!r}"
            )
        entries.append(HostEntry(parts[0], slots))
    return entries


def read_hostfile(path: Path) -> list[HostEntry]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PlanError(f"cannot read the hostfile {path}: {exc.strerror or exc}") from None
    return parse_hostfile(text, str(path))


def is_loopback(host: str) -> bool:
    host = host.strip().lower()
    return host in LOOPBACK_NAMES or host.startswith("127.")


def is_local(host: str, node_addr: str | None = None, hostname: str | None = None) -> bool:
    """Whether a hostfile entry names this box."""
    host = host.strip().lower()
    if is_loopback(host):
        return True
    names = {n.lower() for n in (node_addr, hostname or socket.gethostname()) if n}
    names |= {n.split(".", 1)[0] for n in list(names)}
    return host in names or host.split(".", 1)[0] in names


def plan_nodes(
    *,
    nodes: int,
    gpus: int,
    spec_path: Path,
    run_dir: Path,
    hostfile: Iterable[HostEntry] | None,
    node_addr: str | None = None,
    master_port: int = 29500,
    hostname: str | None = None,
) -> list[NodeLaunch]:
    """One NodeLaunch per node, node 0 first (on this box)."""
    if nodes == 1:
        launch = Launch(
            nproc_per_node=gpus, nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=free_port()
        )
        return [NodeLaunch(0, "127.0.0.1", True, launch, tuple(command(spec_path, run_dir, launch)))]
    if hostfile is None:
        raise PlanError(
            f"resources.nodes is {nodes}, but this worker has no hostfile: set SGMIM_HOSTFILE "
            "to a file listing the GPU boxes (`host slots=N` per line)"
        )
    entries = list(hostfile)
    first = next((i for i, e in enumerate(entries) if is_local(e.host, node_addr, hostname)), None)
    if first is None:
        listed = ", ".join(e.host for e in entries) or "nothing"
        raise PlanError(
            f"this box ({node_addr or hostname or socket.gethostname()}) is not in the hostfile "
            f"(it lists {listed}); the worker that claims a multi-node job is its node 0"
        )
    if entries[first].slots < gpus:
        raise PlanError(
            f"this box has slots={entries[first].slots} in the hostfile, but the job asks "
            f"for resources.gpus={gpus} per node"
        )
    others = [e for i, e in enumerate(entries) if i != first and e.slots >= gpus]
    if len(others) < nodes - 1:
        raise PlanError(
            f"resources.nodes is {nodes}, but the hostfile has only {len(others) + 1} "
            f"host(s) with at least {gpus} slots (resources.gpus)"
        )
    chosen = [entries[first], *others[: nodes - 1]]
    local = [is_local(e.host, node_addr, hostname) for e in chosen]
    if all(local):
        master_addr = "127.0.0.1"
    else:
        master_addr = node_addr or chosen[0].host
        if is_loopback(master_addr):
            raise PlanError(
                f"node 0 is {master_addr!r}, which the other boxes cannot reach: set "
                "SGMIM_NODE_ADDR to this box's address on the network between the boxes"
            )
    port = master_port or free_port()
    plan = []
    for rank, (entry, is_loc) in enumerate(zip(chosen, local, strict=True)):
        launch = Launch(
            nproc_per_node=gpus, nnodes=nodes, node_rank=rank, master_addr=master_addr, master_port=port
        )
        plan.append(NodeLaunch(rank, entry.host, is_loc, launch, tuple(command(spec_path, run_dir, launch))))
    return plan


def remote_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(env.items()) if k in REMOTE_KEYS or k.startswith(REMOTE_ENV_PREFIXES)}


def remote_argv(ssh_command: str, host: str, env: dict[str, str], cwd: str, argv: Iterable[str]) -> list[str]:
    assignments = [f"{k}={v}" for k, v in remote_env(env).items()]
    script = f"cd {shlex.quote(cwd)} && exec env {shlex.join(assignments)} {shlex.join(list(argv))}"
    return [*shlex.split(ssh_command), "-tt", host, script]


def local_threads(env: dict[str, str], local_processes: int) -> dict[str, str]:
    """OMP_NUM_THREADS for a CPU-only box running `local_processes` ranks (several local nodes
    share the cores), unless the environment sets it."""
    if "OMP_NUM_THREADS" not in env:
        env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // max(1, local_processes)))}
    return env
