"""Gang placement at the database level (service/db/gang.py), on SQLite and Postgres: the
worker registry, the all-or-nothing reservation, and what ends an attempt's nodes."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import update

from service.db.gang import Gang
from service.db.models import Worker, utcnow
from service.db.repo import JobRepo
from tests.service.conftest import submit_spec

STALE_S = 30.0


def register(repo: JobRepo, *workers: tuple[str, str], queues: tuple[str, ...] = ("sgmim",)) -> None:
    for name, host in workers:
        repo.register_worker(name, host, f"addr-{name}", 0, [], list(queues))


def gang_job(repo: JobRepo, nodes: int = 2) -> str:
    return submit_spec(repo, resources={"gpus": 1, "nodes": nodes})


def test_a_gang_takes_free_workers_on_distinct_hosts(repo: JobRepo):
    register(repo, ("a1", "host-a"), ("a2", "host-a"), ("b1", "host-b"))
    job_id = gang_job(repo)
    gang = repo.reserve_gang(job_id, STALE_S)
    assert isinstance(gang, Gang) and gang.attempt == 1
    assert [n.node_rank for n in gang.nodes] == [0, 1]
    assert {n.host for n in gang.nodes} == {"host-a", "host-b"}
    job = repo.get(job_id)
    assert job.status == "running" and job.worker == gang.nodes[0].worker and job.error is None
    busy = {w.name: w.job_id for w in repo.workers()}
    assert [busy[n.worker] for n in gang.nodes] == [job_id, job_id]
    assert repo.reserve_gang(job_id, STALE_S) is None, "a running job is not placed twice"


def test_a_gang_waits_with_its_reason_and_reserves_nothing(repo: JobRepo):
    register(repo, ("a1", "host-a"), ("a2", "host-a"), ("c1", "host-c"))
    register(repo, ("g1", "host-g"), queues=("sgmim.h100",))  # serves another queue
    repo.register_worker("old", "host-o", "x", 0, [], ["sgmim"])
    with repo.db.write() as s:  # a worker that stopped heartbeating is gone
        s.execute(update(Worker).where(Worker.name == "old").values(heartbeat_at=utcnow().replace(year=2000)))
    first = repo.reserve_gang(gang_job(repo), STALE_S)
    assert isinstance(first, Gang)
    waiting = gang_job(repo)
    reason = repo.reserve_gang(waiting, STALE_S)
    assert reason == (
        "waiting for 2 free workers on distinct hosts serving queue sgmim: 1 free now, 2 host(s) live"
    )
    job = repo.get(waiting)
    assert job.status == "queued" and job.error == reason and job.attempt == 0
    assert repo.gang_nodes(waiting, 1) == []
    assert [w.name for w in repo.workers() if w.job_id is None] == ["a2", "g1", "old"]
    assert repo.live_hosts("sgmim", STALE_S) == {"host-a", "host-c"}


def test_a_waiting_gang_does_not_hold_back_single_node_jobs(repo: JobRepo):
    """A gang that cannot be placed reserves nothing, so single-node jobs take the free workers
    meanwhile (they are never starved by it); the gang is placed once enough are free."""
    register(repo, ("a1", "host-a"), ("b1", "host-b"))
    single_before = submit_spec(repo)
    assert repo.claim_job(single_before, "a1") == 1
    gang = gang_job(repo)
    assert isinstance(repo.reserve_gang(gang, STALE_S), str), "one free host: the gang waits"
    single_after = submit_spec(repo)  # submitted after the waiting gang
    assert repo.claim_job(single_after, "b1") == 1, "the free worker is not held for the gang"
    assert repo.get(single_after).status == "running"
    for name, job_id in (("a1", single_before), ("b1", single_after)):
        repo.release_worker(name, job_id)
    placed = repo.reserve_gang(gang, STALE_S)
    assert isinstance(placed, Gang) and {n.worker for n in placed.nodes} == {"a1", "b1"}


def test_competing_gangs_never_split_workers_or_deadlock(repo: JobRepo):
    register(repo, *[(f"w{i}", f"host-{i}") for i in range(5)])
    jobs = [gang_job(repo) for _ in range(4)]
    barrier = threading.Barrier(8)

    def place(i: int):
        barrier.wait()
        return repo.reserve_gang(jobs[i % 4], STALE_S)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(place, range(8), timeout=60))
    gangs = [r for r in results if isinstance(r, Gang)]
    assert len(gangs) == 2, results  # five workers hold two gangs of two
    used = [n.worker for g in gangs for n in g.nodes]
    assert len(used) == len(set(used)) == 4
    placed = {g.job_id for g in gangs}
    for job_id in jobs:
        assert (repo.get(job_id).status == "running") == (job_id in placed)
        assert bool(repo.gang_nodes(job_id, 1)) == (job_id in placed), "all or nothing"


def test_a_worker_holding_a_gang_node_refuses_a_single_node_claim(repo: JobRepo):
    register(repo, ("a1", "host-a"), ("b1", "host-b"))
    gang = repo.reserve_gang(gang_job(repo), STALE_S)
    assert isinstance(gang, Gang)
    single = submit_spec(repo)
    assert repo.claim_job(single, "a1") is None
    assert repo.get(single).status == "queued"
    repo.start_node(gang.job_id, 1, 0, gang.nodes[0].worker)
    assert repo.claim_job(single, gang.nodes[0].worker) is None, "a running node refuses too"
    repo.release_worker(gang.nodes[0].worker, gang.job_id)
    assert repo.claim_job(single, gang.nodes[0].worker) == 1
    assert {w.name: w.job_id for w in repo.workers()}[gang.nodes[0].worker] == single


def test_the_end_of_an_attempt_frees_unstarted_nodes_and_stops_the_others(repo: JobRepo):
    register(repo, ("a1", "host-a"), ("b1", "host-b"))
    gang = repo.reserve_gang(gang_job(repo), STALE_S)
    assert isinstance(gang, Gang)
    job_id, (node0, node1) = gang.job_id, gang.nodes
    assert repo.start_node(job_id, 1, 0, node0.worker) is not None
    assert repo.start_node(job_id, 1, 0, node0.worker) is None, "a duplicated message does nothing"
    assert repo.node_heartbeat(job_id, 1, 0) == "running"
    assert repo.requeue(job_id, "node 1 lost", attempt=2) is None, "another attempt: nothing changes"
    assert repo.requeue(job_id, "node 1 lost", attempt=1) == "queued"
    assert repo.node_heartbeat(job_id, 1, 0) is None, "node 0 must stop"
    assert repo.start_node(job_id, 1, 1, node1.worker) is None, "a late message of an old attempt"
    statuses = {n.node_rank: n.status for n in repo.gang_nodes(job_id, 1)}
    assert statuses == {0: "running", 1: "released"}
    free = {w.name: w.job_id for w in repo.workers()}
    assert free[node1.worker] is None, "the unstarted node's worker is free at once"
    assert free[node0.worker] == job_id, "a started node frees its worker when its task ends"
    again = repo.reserve_gang(job_id, STALE_S)
    assert again == (
        "waiting for 2 free workers on distinct hosts serving queue sgmim: 1 free now, 2 host(s) live"
    )
    repo.release_worker(node0.worker, job_id)
    again = repo.reserve_gang(job_id, STALE_S)
    assert isinstance(again, Gang) and again.attempt == 2
