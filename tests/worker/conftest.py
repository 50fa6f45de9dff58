"""Real processes for the worker tests: one uvicorn API and one `python -m worker` per stack.

Stacks (`stack` is module-scoped and parametrised):
- "embedded": SQLite + the filesystem broker (no server process), as `sgmim serve --with-worker`;
- "redis": Postgres (a fresh database on the `pg_admin_url` server) + database 12 of the
  `redis_server` (flushed), as the compose deployment (tests/services.py says which servers).
Short thresholds make recovery fast: heartbeat 1 s, stale after 6 s, reaper every 1 s.
The worker runs with concurrency 2 so that a second delivery of a message can be consumed while
the first one's job runs (the redelivery test); everything else runs one job at a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.db.repo import JobRepo
from service.db.session import Database
from service.settings import Settings
from tests.service.conftest import create_pg_database, drop_pg_database, start_uvicorn
from tests.service.conftest import stop as stop_uvicorn

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "jobs" / "pretrain-tiny.yaml"
REDIS_DB = 12  # the service tests use 11
JOBS = "/api/v1/jobs"

WORKER_ENV = {
    "SGMIM_HEARTBEAT_INTERVAL_S": "1",
    "SGMIM_STALE_HEARTBEAT_S": "6",
    "SGMIM_REAPER_INTERVAL_S": "1",
    "SGMIM_UNCLAIMED_REQUEUE_S": "30",
    "SGMIM_CANCEL_GRACE_S": "5",
    "SGMIM_MASTER_PORT": "0",
    # 2 shared cores: one thread per rank keeps the tiny runs steady when the box is busy
    "OMP_NUM_THREADS": "1",
}


def tiny_spec(steps: int = 12, name: str = "tiny", **sections: Any) -> dict[str, Any]:
    """pretrain-tiny.yaml cut down: 32 synthetic images, batch 8, `steps` steps, a metric line
    every step, a checkpoint every 4; `sections` update config sections (data, optim, ...)
    or top-level keys (resources, max_restarts)."""
    spec = yaml.safe_load(TINY.read_text())
    spec["name"] = name
    config = spec["config"]
    config["data"].update(num_images=32)
    config["optim"].update(warmup_epochs=0)
    config["schedule"] = {"batch_size": 8, "steps": steps, "log_every": 1, "checkpoint_every": 4}
    for key, value in sections.items():
        if key in config and isinstance(value, dict):
            config[key].update(value)
        else:
            spec[key] = value
    return spec


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# The process table ----------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    return bool(stat) and stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X")


def job_processes(job_id: str, run_dir: Path | None = None) -> list[tuple[int, str]]:
    """Live processes of a job: SGMIM_JOB_ID=<job> in the environment, or the run directory
    in the command line. (pid, command line) pairs."""
    marker = f"SGMIM_JOB_ID={job_id}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
        if (marker in environ or (run_dir is not None and str(run_dir) in cmdline)) and _alive(pid):
            found.append((pid, cmdline))
    return found


def trainer_processes(job_id: str) -> list[tuple[int, str]]:
    return [(pid, cmd) for pid, cmd in job_processes(job_id) if "sgmim.train" in cmd]


def group_pids(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _read(f"/proc/{name}/stat")
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and _alive(int(name)):
                pids.append(int(name))
    return pids


# Processes ------------------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill9(self) -> None:
        """SIGKILL the worker's whole process group (parent and pool children), like a box dying.
        Also how a stack's teardown stops its workers: it checks nothing of the stop (a busy
        worker's SIGTERM would wait for its run); a supervised run dies with its pool child
        (PR_SET_PDEATHSIG)."""
        with contextlib.suppress(ProcessLookupError):  # a restarted worker's old, killed group
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Stack:
    name: str
    settings: Settings
    url: str
    env: dict[str, str]
    repo: JobRepo
    client: httpx.Client
    folder: Path
    workers: list[Worker] = field(default_factory=list)

    @property
    def worker(self) -> Worker:
        return self.workers[-1]

    def start_worker(
        self, name: str, ready_timeout: float = 60, concurrency: int = 2, **env: str
    ) -> Worker:
        """`env`: extra SGMIM_* settings of this worker (e.g. its host identity)."""
        log = self.folder / f"{name}.log"
        start = log.stat().st_size if log.exists() else 0
        out = open(log, "ab")  # noqa: SIM115  (a restarted worker appends)
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "--concurrency", str(concurrency), "--name", name],
            cwd=ROOT,
            env={**self.env, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        worker = Worker(name, proc, log)
        self.workers.append(worker)
        wait_for(
            lambda: proc.poll() is not None or b" ready." in log.read_bytes()[start:],
            ready_timeout,
            f"worker {name} to be ready",
        )
        assert proc.poll() is None, worker.text()
        return worker

    def submit(self, spec: dict[str, Any]) -> str:
        r = self.client.post(JOBS, json=spec)
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"{JOBS}/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: str, statuses: tuple[str, ...] | str, timeout: float) -> dict[str, Any]:
        statuses = (statuses,) if isinstance(statuses, str) else statuses
        found: dict[str, Any] = {}

        def check() -> bool:
            found.update(self.job(job_id))
            return found["status"] in statuses

        try:
            wait_for(check, timeout, f"job {job_id} to be {'/'.join(statuses)}", interval=0.25)
        except pytest.fail.Exception:
            print(self.worker.text()[-6000:])
            print(self.logs(job_id)[-60:])
            raise
        return found

    def metrics(self, job_id: str, name: str | None = None) -> list[dict[str, Any]]:
        items, after = [], 0
        while True:
            params: dict[str, Any] = {"after": after, "limit": 1000}
            if name:
                params["names"] = name
            page = self.client.get(f"{JOBS}/{job_id}/metrics", params=params).json()["items"]
            if not page:
                return items
            items.extend(page)
            after = page[-1]["seq"]

    def logs(self, job_id: str) -> list[str]:
        r = self.client.get(f"{JOBS}/{job_id}/logs", params={"tail": 10000})
        return [line["line"] for line in r.json()["lines"]]

    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        return self.client.get(f"{JOBS}/{job_id}/checkpoints").json()["items"]

    def run_dir(self, job_id: str) -> Path:
        return self.settings.run_dir(job_id)


@pytest.fixture(scope="module", params=["embedded", "redis"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp(f"worker-{request.param}")
    hostfile = folder / "hostfile"
    hostfile.write_text("# two 'nodes' on this box\n127.0.0.1 slots=1\n127.0.0.1 slots=1\n")
    pg_admin_url = pg_url = None
    if request.param == "embedded":
        database_url, broker_url = f"sqlite:///{folder / 'sgmim.db'}", None
    else:
        import redis

        pg_admin_url = request.getfixturevalue("pg_admin_url")
        broker_url = request.getfixturevalue("redis_server").url(REDIS_DB)
        client = redis.Redis.from_url(broker_url)
        client.flushdb()
        client.close()
        pg_url = database_url = create_pg_database(pg_admin_url)
    # the tests' data folders (tmp_path) are data roots, as /datasets is in deployment
    data_roots = str(tmp_path_factory.getbasetemp())
    settings = Settings(data_dir=folder / "data", database_url=database_url, broker_url=broker_url,
                        data_roots=[data_roots])
    env = clean_env(
        SGMIM_DATA_ROOTS=data_roots,
        SGMIM_DATA_DIR=str(settings.data_dir),
        SGMIM_DATABASE_URL=database_url,
        SGMIM_HOSTFILE=str(hostfile),
        SGMIM_MULTINODE_LAUNCHER="ssh",  # this stack tests the hostfile launcher; test_gang the other
        **WORKER_ENV,
        **({"SGMIM_BROKER_URL": broker_url} if broker_url else {}),
    )
    api, url = start_uvicorn(settings, {"SGMIM_MULTINODE_LAUNCHER": "ssh", "SGMIM_DATA_ROOTS": data_roots},
                             log=folder / "api.log")
    db = Database.from_settings(settings)
    st = Stack(request.param, settings, url, env, JobRepo(db), httpx.Client(base_url=url, timeout=30), folder)
    try:
        st.start_worker(f"w1-{request.param}")
        yield st
    finally:
        for worker in st.workers:
            worker.kill9()
        st.client.close()
        stop_uvicorn(api)
        db.dispose()
        if pg_admin_url and pg_url:
            drop_pg_database(pg_admin_url, pg_url)
        if broker_url:
            import redis

            client = redis.Redis.from_url(broker_url)
            client.flushdb()
            client.close()
