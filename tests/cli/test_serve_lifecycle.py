"""`sgmim serve --with-worker` as a real process: its worker (and the worker's pool child) never
outlive it, whether it is stopped with SIGTERM (kill, systemd, docker) or killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sgmim.train.launch import free_port
from tests.cli.conftest import ROOT, clean_env


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """A server with its worker up: (server process, [worker pid, pool child pid])."""
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sgmim.cli", "serve", "--port", str(port), "--with-worker"],
        env=clean_env(SGMIM_DATA_DIR=str(tmp_path / "state")), cwd=ROOT, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    tree: list[int] = []
    try:
        def up() -> bool:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
            workers = children(proc.pid)
            pool = [child for w in workers for child in children(w)]
            tree[:] = workers + pool
            return ready and bool(workers) and bool(pool)

        wait_until(up, 120, "the server, its worker and the worker's pool child")
        yield proc, list(tree)
    finally:
        for pid in [proc.pid, *tree]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        log.close()


def test_sigterm_stops_the_server_and_its_worker(serving):
    proc, tree = serving
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(60)
    wait_until(lambda: not any(alive(pid) for pid in tree), 10, "the worker to be gone")


def test_a_server_killed_with_minus_9_takes_its_worker_with_it(serving):
    proc, tree = serving
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_until(lambda: not any(alive(pid) for pid in tree), 20, "the worker and its pool child to die")
