"""`sgmim serve` with several API processes (SGMIM_API_WORKERS, issue 14 finding 10): each
process runs its own dispatcher and its own submit writer, and connections land on any of
them. Every job is stored once with its first event, gets exactly one wake-up message, and an
SSE stream resumed over new connections (so on whichever process accepts them) delivers every
event exactly once, in order."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from service.db.repo import JobRepo
from service.db.session import Database
from tests.service.conftest import (
    PRETRAIN,
    ROOT,
    Backend,
    broker_messages,
    free_port,
    make_settings,
    own_database,
    stop,
)
from tests.service.test_uvicorn import sse_events, wait_until

pytestmark = pytest.mark.slow
JOBS = "/api/v1/jobs"
PROCESSES = 2


def serve(data_dir: Path, database_url: str) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m service` (what `sgmim serve` runs) with PROCESSES API processes."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(SGMIM_DATA_DIR=str(data_dir), SGMIM_DATABASE_URL=database_url,
               SGMIM_API_WORKERS=str(PROCESSES), SGMIM_SSE_POLL_INTERVAL_S="0.05", SGMIM_ACCESS_LOG="false")
    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        started = (data_dir / "serve.log").read_text().count("Application startup complete")
        try:
            return started == PROCESSES and httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(ready, timeout=90):
        stop(proc)
        raise AssertionError((data_dir / "serve.log").read_text()[-3000:])
    return proc, url


@pytest.fixture(scope="module")
def api_processes(backend: Backend, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The processes on a database of their own: their two dispatchers are the only ones there.
    Shared by this module's tests (one set per backend); each looks at its own jobs only."""
    data_dir = tmp_path_factory.mktemp(f"api-processes-{backend.name}")
    with own_database(backend, request, data_dir) as database_url:
        settings = make_settings(data_dir, database_url)
        proc, url = serve(data_dir, database_url)
        db = Database.from_settings(settings)
        try:
            yield url, settings, JobRepo(db)
        finally:
            stop(proc)
            db.dispose()


def test_concurrent_submits_are_stored_and_sent_exactly_once(api_processes):
    url, settings, repo = api_processes

    def submit(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as client:  # a new connection each time
            return client.post(JOBS, json={**PRETRAIN, "name": f"p{i}"})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(submit, range(120)))
    failed = [r.text for r in responses if r.status_code != 201]
    assert not failed, failed
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == 120
    for job_id in ids[::10]:
        assert repo.get(job_id).status == "queued" and repo.events(job_id).last_seq == 1

    def sent() -> list[str]:
        return [m["args"][0] for m in broker_messages(settings) if m["args"][0] in ids]

    wait_until(lambda: len(sent()) >= 120, timeout=30)
    time.sleep(1.5)  # every dispatcher's next periodic pass too: none may send a job again
    assert sorted(sent()) == sorted(ids), "one message per job, whichever process stored it"


def test_sse_resumed_on_new_connections_delivers_every_event_once(api_processes):
    url, _, repo = api_processes
    job_id = httpx.post(url + JOBS, json={**PRETRAIN, "name": "sse"}, timeout=30).json()["id"]
    attempt = repo.claim_job(job_id, "w")

    def worker() -> None:
        for i in range(40):
            repo.append_metrics(job_id, [{"step": i, "name": "loss", "value": 1 / (i + 1)}])
            repo.append_logs(job_id, [f"step {i}"])
            time.sleep(0.01)
        repo.finish_job(job_id, attempt, "succeeded")

    writer = threading.Thread(target=worker)
    writer.start()
    ids: list[int] = []
    final, connections = None, 0
    while final is None:
        connections += 1
        headers = {"Last-Event-ID": str(ids[-1])} if ids else {}
        with httpx.Client(base_url=url, timeout=10) as client, client.stream(
            "GET", f"{JOBS}/{job_id}/events", headers=headers
        ) as stream:
            for n, event in enumerate(sse_events(stream)):
                if event["id"] is None:
                    final = event
                    break
                ids.append(event["id"])
                if n == 9 and connections < 8:
                    break  # drop this connection; the next one may reach the other process
    writer.join()
    last_seq = repo.events(job_id).last_seq
    assert connections >= 3
    assert ids == list(range(1, last_seq + 1)), "every event, once, in order"
    assert final["data"] == {"status": "succeeded", "final": True, "last_seq": last_seq}
