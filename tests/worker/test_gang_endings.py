"""How a gang's attempt ends when node 0's trainer succeeds, on SQLite and Postgres: the real
GangSupervisor of each node (one thread per node, as one worker per box), with a script as each
node's trainer so that node 1's exit comes a known time after node 0's."""

from __future__ import annotations

import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.db import open_repo
from service.db.gang import Gang
from service.db.repo import JobRepo
from service.settings import Settings
from sgmim.spec import parse_spec
from sgmim.train.launch import Launch
from tests.service.conftest import create_pg_database, drop_pg_database
from worker.gang import GangSupervisor
from worker.multinode import NodeLaunch

# argv: seconds to wait, exit code
TRAINER = textwrap.dedent(
    """
    import sys, time
    print("fake node up", flush=True)
    time.sleep(float(sys.argv[1]))
    sys.exit(int(sys.argv[2]))
    """
)


class ScriptNode(GangSupervisor):
    """The real node supervisor with TRAINER as its launcher (no rendezvous to wait for)."""

    scripts: dict[int, tuple[float, int]] = {}

    def plan(self, spec, spec_path):
        seconds, code = self.scripts[self.rank]
        argv = (sys.executable, "-c", TRAINER, str(seconds), str(code))
        return [NodeLaunch(self.rank, self.node.host, True, Launch(1, 2, self.rank, "127.0.0.1", 1), argv)]


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[JobRepo, Settings]]:
    admin_url = request.getfixturevalue("pg_admin_url") if request.param == "postgres" else None
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if admin_url is None else create_pg_database(admin_url)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=url, heartbeat_interval_s=0.2, cancel_grace_s=2,
        stale_heartbeat_s=30,
    )
    repo = open_repo(settings)
    try:
        yield repo, settings
    finally:
        repo.db.dispose()
        if admin_url is not None:
            drop_pg_database(admin_url, url)


def run_gang(repo: JobRepo, settings: Settings, scripts: dict[int, tuple[float, int]]) -> str:
    """Place a 2-node job on two boxes and run both nodes to their end; the job's id."""
    for name, host in (("w0", "box-0"), ("w1", "box-1")):
        repo.register_worker(name, host, "127.0.0.1", 0, [], ["sgmim"])
    spec = {"kind": "pretrain", "name": "g", "resources": {"gpus": 1, "nodes": 2},
            "config": {"schedule": {"steps": 3}}}
    job_id = repo.submit(parse_spec(spec).model_dump(mode="json"), queue="sgmim").job.id
    gang = repo.reserve_gang(job_id, settings.stale_heartbeat_s)
    assert isinstance(gang, Gang)
    ScriptNode.scripts = scripts
    outcomes: dict[int, str] = {}

    def node(rank: int) -> None:
        info = repo.start_node(job_id, gang.attempt, rank, gang.nodes[rank].worker)
        assert info is not None
        outcomes[rank] = ScriptNode(repo, settings, info, info.worker).run()

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert set(outcomes) == {0, 1}, "both nodes' supervisors returned"
    return job_id


def test_node_0_waits_for_the_other_nodes_exit_before_the_job_succeeds(env):
    """Node 1's launcher exits 2 s after node 0's (it is finishing, not hung): it ends
    'exited' 0, not stopped by a heartbeat that found the job already succeeded."""
    repo, settings = env
    job_id = run_gang(repo, settings, {0: (0, 0), 1: (2, 0)})
    job = repo.get(job_id)
    assert job.status == "succeeded", job.error
    node1 = repo.gang_nodes(job_id, 1)[1]
    assert (node1.status, node1.exit_code) == ("exited", 0)


def test_a_node_that_exits_non_zero_after_node_0_succeeded_fails_the_job(env):
    repo, settings = env
    job_id = run_gang(repo, settings, {0: (0, 0), 1: (1, 3)})
    job = repo.get(job_id)
    assert job.status == "failed"
    assert job.error.startswith("node 1 (worker w1 on box-1): trainer exited with code 3"), job.error
