"""`sgmim serve --with-worker` as a real process: its worker (and the worker's pool child) never
outlive it, whether it is stopped with SIGTERM (kill, systemd, docker) or killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from sgmim.train.launch import free_port
from tests.cli.conftest import ROOT, clean_env, start_server


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


def test_sigterm_ends_open_event_streams_instead_of_cancelling_them(tmp_path):
    """A `sgmim watch` attached to a job that runs on: SIGTERM ends its event stream at once,
    so the server neither waits out its graceful-shutdown timeout nor cancels the stream with
    an error and a traceback; the stream's events up to then arrived."""
    state = tmp_path / "state"
    state.mkdir()
    proc, url = start_server(state)  # no worker: the job stays queued, its stream stays open
    spec = yaml.safe_load((ROOT / "examples/jobs/pretrain-tiny.yaml").read_text())
    job = httpx.post(f"{url}/api/v1/jobs", json=spec, timeout=30).json()
    seen: list[str] = []

    def follow() -> None:
        with httpx.stream("GET", f"{url}/api/v1/jobs/{job['id']}/events", timeout=60) as stream:
            for line in stream.iter_lines():
                seen.append(line)

    reader = threading.Thread(target=follow)
    reader.start()
    wait_until(lambda: any(line.startswith("event: status") for line in seen), 30,
               "the stream's first status event")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM  # as a process stopped by the signal
    reader.join(10)
    assert not reader.is_alive()
    log = (state / "server.log").read_text()
    assert "Shutting down" in log, log[-3000:]
    assert "timeout graceful shutdown exceeded" not in log and "CancelledError" not in log, log[-3000:]
    assert not any('"final":true' in line for line in seen)  # ended by the stop, not by the job
