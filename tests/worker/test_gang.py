"""Multi-node jobs placed on workers (no SSH): three real workers with distinct host identities
(box-1..3 on 127.0.0.1..3), each consuming the default queue and its host's own queue, against
Postgres + Redis; the nodes meet through torchrun's c10d rendezvous at node 0, CPU gloo ranks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.db.repo import JobRepo
from service.db.session import Database
from service.settings import Settings
from tests.service.conftest import create_pg_database, drop_pg_database, start_uvicorn
from tests.service.conftest import stop as stop_uvicorn
from tests.worker.conftest import JOBS, WORKER_ENV, Stack, clean_env, tiny_spec, wait_for

pytestmark = pytest.mark.slow

REDIS_DB = 14  # the service tests use 11, the worker tests 12
BOXES = {"g1": ("box-1", "127.0.0.1"), "g2": ("box-2", "127.0.0.2"), "g3": ("box-3", "127.0.0.3")}
TWO_NODES = {"gpus": 1, "nodes": 2}


def start_box(stack: Stack, name: str) -> None:
    host, address = BOXES[name]
    stack.start_worker(name, concurrency=1, SGMIM_WORKER_HOST=host, SGMIM_NODE_ADDR=address)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg_admin_url: str, redis_server) -> Iterator[Stack]:
    import redis

    folder = tmp_path_factory.mktemp("gang")
    redis_url = redis_server.url(REDIS_DB)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    database_url = create_pg_database(pg_admin_url)
    settings = Settings(data_dir=folder / "data", database_url=database_url, broker_url=redis_url)
    env = clean_env(
        SGMIM_DATA_DIR=str(settings.data_dir),
        SGMIM_DATABASE_URL=database_url,
        SGMIM_BROKER_URL=redis_url,
        # the ghost test waits this out; both nodes' torchruns start within a second or two of
        # each other, well inside it (it is also their rendezvous join timeout)
        SGMIM_GANG_START_TIMEOUT_S="15",
        **WORKER_ENV,
    )
    api, url = start_uvicorn(settings, {"SGMIM_STALE_HEARTBEAT_S": "6"}, log=folder / "api.log")
    db = Database.from_settings(settings)
    st = Stack("gang", settings, url, env, JobRepo(db), httpx.Client(base_url=url, timeout=30), folder)
    try:
        for name in BOXES:
            start_box(st, name)
        yield st
    finally:
        for worker in st.workers:
            worker.kill9()
        st.client.close()
        stop_uvicorn(api)
        db.dispose()
        drop_pg_database(pg_admin_url, database_url)
        client.flushdb()
        client.close()


def attempt_processes(job_id: str, attempt: int) -> list[tuple[int, str]]:
    """Live processes of one attempt of the job (SGMIM_JOB_ID and SGMIM_ATTEMPT in the environment)."""
    marks = {f"SGMIM_JOB_ID={job_id}".encode(), f"SGMIM_ATTEMPT={attempt}".encode()}
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            environ = set(Path(f"/proc/{name}/environ").read_bytes().split(b"\0"))
            stat = Path(f"/proc/{name}/stat").read_bytes()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marks <= environ and stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X"):
            found.append((int(name), cmdline))
    return found


def trainers_by_node(job_id: str, attempt: int) -> dict[int, int]:
    """Gang node rank -> number of live `sgmim.train` rank processes of that node."""
    counts: dict[int, int] = {}
    for pid, cmd in attempt_processes(job_id, attempt):
        if "-m sgmim.train " not in cmd or "torch.distributed.run" in cmd:
            continue
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        node = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"SGMIM_GANG_NODE=")), None)
        if node is not None:
            counts[int(node)] = counts.get(int(node), 0) + 1
    return counts


def finish(stack: Stack, job_id: str, timeout: float = 240) -> dict:
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), timeout)
    if job["status"] != "succeeded":
        print("\n".join(stack.logs(job_id)[-80:]))
    return job


def all_free(stack: Stack) -> bool:
    live = [w for w in stack.repo.workers() if w.name.split("@")[0] in BOXES]
    return len(live) == len(BOXES) and all(w.job_id is None for w in live)


def test_more_nodes_than_hosts_is_refused_with_the_reason(stack: Stack):
    wait_for(lambda: len(stack.repo.live_hosts("sgmim", 6)) == 3, 30, "three registered hosts")
    r = stack.client.post(JOBS, json=tiny_spec(steps=4, name="too-big", resources={"gpus": 1, "nodes": 4}))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", "resources", "nodes"] and detail[0]["type"] == "not_placeable"
    assert "asks for 4 nodes, but only 3 host(s)" in detail[0]["msg"]
    assert "box-1, box-2, box-3" in detail[0]["msg"]


def assert_both_shards(stack: Stack, job_id: str) -> None:
    """A two-node job of 8 steps ran once, one node per host, and left no process behind."""
    job = stack.job(job_id)
    if job["status"] != "succeeded":
        print("\n".join(stack.logs(job_id)[-80:]))
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1

    nodes = stack.repo.gang_nodes(job_id, 1)
    assert [n.node_rank for n in nodes] == [0, 1]
    assert len({n.host for n in nodes}) == 2, "one node per host"
    assert all(n.status == "exited" and n.exit_code == 0 for n in nodes[1:])
    assert job["worker"] == nodes[0].worker

    run_dir = stack.run_dir(job_id)
    shards = sorted(p.name for p in (run_dir / "checkpoints" / "global_step8").glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert any("rank_0" in s for s in shards) and any("rank_1" in s for s in shards), shards
    logs = stack.logs(job_id)
    for node in nodes:
        tag = f"[node {node.node_rank}] "
        launch = [line for line in logs if line.startswith(tag) and "--rdzv-backend=c10d" in line]
        assert launch, f"node {node.node_rank}'s launch line"
        assert f"--rdzv-id={job_id}-1" in launch[0] and f"--node-rank={node.node_rank}" in launch[0]
        assert f"--rdzv-endpoint={nodes[0].address}:{nodes[0].port}" in launch[0]
        assert f"--local-addr={node.address}" in launch[0]
    ranks_done = {rank for rank in (0, 1) for line in logs if f"[rank {rank}] INFO done" in line}
    assert ranks_done == {0, 1}
    assert [m["step"] for m in stack.metrics(job_id, "loss")] == list(range(1, 9)), "rank 0's metrics, once"
    assert not attempt_processes(job_id, 1)


def test_two_gangs_on_three_workers_both_finish_with_both_shards(stack: Stack):
    wait_for(lambda: all_free(stack), 30, "every worker free")
    first = stack.submit(tiny_spec(steps=8, name="gang-a", resources=TWO_NODES))
    second = stack.submit(tiny_spec(steps=8, name="gang-b", resources=TWO_NODES))
    reasons = set()

    def both_done() -> bool:
        jobs = [stack.job(first), stack.job(second)]
        reasons.update(j["error"] for j in jobs if j["status"] == "queued" and j["error"])
        return all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs)

    wait_for(both_done, 300, "both gangs to finish", interval=0.5)
    for job_id in (first, second):
        assert_both_shards(stack, job_id)
    # three workers hold one gang at a time: the other waited, with its reason in the job
    assert any("waiting for 2 free workers on distinct hosts" in r for r in reasons), reasons
    wait_for(lambda: all_free(stack), 15, "every worker free again")


@pytest.mark.parametrize("rank", [1, 0])
def test_a_killed_node_worker_stops_the_attempt_and_the_job_resumes(stack: Stack, rank: int):
    """Node 1's box dies: node 0 sees its heartbeat stop and requeues. Node 0's box dies: the
    job's heartbeat stops, the reaper requeues, node 1 stops (its trainer loses the store, or
    its heartbeat finds the attempt over)."""
    wait_for(lambda: all_free(stack), 30, "every worker free")
    steps = 28
    spec = tiny_spec(steps=steps, name=f"gang-kill-{rank}", resources=TWO_NODES, max_restarts=2)
    job_id = stack.submit(spec)
    # any recorded checkpoint: the trainer keeps the latest 2 of one every 4 steps, so a given
    # tag lives ~8 steps (2 s here), about as long as the supervisor takes to look again (every
    # 2 s): the first one is recorded by step 12 or so, and the kill comes 16 steps before the end
    wait_for(lambda: any(c["kind"] == "deepspeed" for c in stack.checkpoints(job_id)), 180, "a checkpoint")
    dead = stack.repo.gang_nodes(job_id, 1)[rank]
    victim = next(w for w in stack.workers if w.name == dead.worker.split("@")[0] and w.proc.poll() is None)
    assert trainers_by_node(job_id, 1) == {0: 1, 1: 1}
    victim.kill9()
    killed_at = time.monotonic()
    wait_for(lambda: not attempt_processes(job_id, 1), 30, "every process of attempt 1 to be gone")
    assert time.monotonic() - killed_at <= 30

    job = finish(stack, job_id, 300)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2 and job["restarts"] == 1
    logs = stack.logs(job_id)
    if rank == 1:
        assert any(f"node 1 (worker {dead.worker}" in line and "stopped heartbeating" in line
                   for line in logs), "node 0 saw node 1 vanish"
    else:
        survivor = stack.repo.gang_nodes(job_id, 1)[1]
        assert survivor.status in ("stopped", "exited"), "node 1 ended with the attempt"
    attempt2 = stack.repo.gang_nodes(job_id, 2)
    assert dead.worker not in {n.worker for n in attempt2}, "the dead worker is not chosen"
    assert any("resumed from global_step" in line for line in logs), "attempt 2 resumed from the checkpoint"
    assert [m["step"] for m in stack.metrics(job_id, "loss")][-1] == steps
    start_box(stack, victim.name)  # back to three boxes for the next tests


def test_cancel_stops_every_node(stack: Stack):
    wait_for(lambda: all_free(stack), 30, "every worker free")
    job_id = stack.submit(tiny_spec(steps=400, name="gang-cancel", resources=TWO_NODES))
    wait_for(lambda: trainers_by_node(job_id, 1) == {0: 1, 1: 1}, 120, "both nodes' trainers")
    r = stack.client.post(f"{JOBS}/{job_id}/cancel")
    assert r.status_code == 202, r.text
    job = stack.wait_status(job_id, ("cancelled", "failed", "succeeded"), 60)
    assert job["status"] == "cancelled", job["error"]
    wait_for(lambda: not attempt_processes(job_id, 1), 20, "every node's processes to stop")
    # node 1's worker saw the cancel (stopped), or its trainer lost node 0's store first (exited)
    wait_for(lambda: stack.repo.gang_nodes(job_id, 1)[1].status in ("stopped", "exited"), 20, "node 1 ended")
    wait_for(lambda: all_free(stack), 15, "every worker free again")


def test_a_node_that_never_starts_releases_the_gang_after_the_timeout(stack: Stack):
    """A registered worker that never takes its node's message (its box hangs): node 0 gives the
    attempt up after gang_start_timeout_s (15 s here) and the job runs on boxes that work."""
    wait_for(lambda: all_free(stack), 30, "every worker free")
    stop = threading.Event()

    def ghost_heartbeat() -> None:  # sorts between box-1 and box-2: node 1 of the next gang
        queues = ["sgmim", "sgmim.host.box-15"]
        stack.repo.register_worker("ghost@box-15", "box-15", "127.0.0.15", 0, [], queues)
        while not stop.wait(0.5):
            stack.repo.worker_heartbeat("ghost@box-15")

    beating = threading.Thread(target=ghost_heartbeat, daemon=True)
    beating.start()
    try:
        wait_for(lambda: "box-15" in stack.repo.live_hosts("sgmim", 6), 10, "the ghost registered")
        job_id = stack.submit(tiny_spec(steps=8, name="gang-ghost", resources=TWO_NODES, max_restarts=1))
        wait_for(lambda: stack.repo.gang_nodes(job_id, 1), 30, "the first placement")
        assert stack.repo.gang_nodes(job_id, 1)[1].worker == "ghost@box-15"
    finally:
        stop.set()  # the ghost goes stale, so the next placement skips it
        beating.join(5)
    job = finish(stack, job_id, 240)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2 and job["restarts"] == 1
    gave_up = "node 1 (worker ghost@box-15 on box-15) did not start"
    assert any(gave_up in line for line in stack.logs(job_id))
    assert "ghost@box-15" not in {n.worker for n in stack.repo.gang_nodes(job_id, 2)}
    assert {n.node_rank: n.status for n in stack.repo.gang_nodes(job_id, 1)}[1] == "released"
    assert not attempt_processes(job_id, 1)
    stack.repo.unregister_worker("ghost@box-15")
