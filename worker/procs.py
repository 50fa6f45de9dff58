"""Signals to a run's process groups and a sweep of the process table for anything of the run
that is left (Linux /proc).

Every launcher starts in a session of its own (`start_new_session=True`), so its pid is its
process group id, and it dies with the supervisor (PR_SET_PDEATHSIG). torchrun's ranks run in
sessions of their own and set PDEATHSIG themselves; processes they fork (DataLoader workers)
may not. Every process of a run carries `SGMIM_JOB_ID=<job>` and `SGMIM_ATTEMPT=<n>` in its
environment, which is what `run_processes` looks for; the processes of one node of a
multi-node job also carry `SGMIM_GANG_NODE=<rank>`, so that a node's sweep spares the other
nodes' processes when several nodes share a box (the tests).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable

from sgmim import rundir

ENV_GANG_NODE = "SGMIM_GANG_NODE"


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send `sig` to the process group the launcher leads (also after the leader exited: the
    group id stays reserved while any member lives)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def environ_of(pid: int) -> dict[bytes, bytes] | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key] = value
    return env


def run_processes(
    job_id: str, attempt: int | None = None, exclude: Iterable[int] = (), node: int | None = None
) -> list[int]:
    """Pids whose environment says they belong to the job (and attempt, and gang node, when given)."""
    if not os.path.isdir("/proc"):
        return []
    skip = {os.getpid(), *exclude}
    want_job, want_attempt = job_id.encode(), None if attempt is None else str(attempt).encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in skip:
            continue
        env = environ_of(int(name))
        if not env or env.get(rundir.ENV_JOB_ID.encode()) != want_job:
            continue
        if want_attempt is not None and env.get(rundir.ENV_ATTEMPT.encode()) != want_attempt:
            continue
        if node is not None and env.get(ENV_GANG_NODE.encode()) != str(node).encode():
            continue
        if is_gone(int(name)):
            continue
        found.append(int(name))
    return found


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] in (b"Z", b"X")


def kill_strays(job_id: str, attempt: int, timeout: float = 5.0, node: int | None = None) -> list[int]:
    """SIGKILL every process of this attempt (of this gang node, when given) still alive;
    returns the pids that were found."""
    found = run_processes(job_id, attempt, node=node)
    deadline = time.monotonic() + timeout
    seen = set(found)
    while found:
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
        found = run_processes(job_id, attempt, node=node)
        seen.update(found)
    return sorted(seen)


def stop_groups(
    procs: list[subprocess.Popen], grace_s: float, on_wait: Callable[[], None] | None = None
) -> None:
    """SIGTERM every launcher's group, wait up to `grace_s` for the launchers to exit (calling
    `on_wait` between checks, e.g. to keep tailing logs), then SIGKILL the groups."""
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        if on_wait is not None:
            on_wait()
        time.sleep(0.1)
    for proc in procs:
        signal_group(proc, signal.SIGKILL)  # the leader may be gone while members live on
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
