"""How an attempt's end is recorded, on SQLite and on Postgres: text the trainer writes that
Postgres cannot store (NUL), an outcome the database refuses (never a rerun), and a trainer
killed by a signal (a lost worker, within max_restarts)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from service.db import open_repo
from service.db.models import Attempt
from service.db.repo import JobRepo
from service.settings import Settings
from sgmim.spec import parse_spec
from sgmim.train.launch import Launch
from tests.service.conftest import create_pg_database, drop_pg_database
from worker import supervisor as supervisor_module
from worker.multinode import NodeLaunch
from worker.supervisor import Supervisor

TRAINER = textwrap.dedent(
    """
    import os, signal, sys
    how = sys.argv[1]
    print("fake trainer up", flush=True)
    if how == "nul":
        print("CUDA error at \\x00 byte: the real reason", file=sys.stderr, flush=True)
        sys.exit(3)
    if how == "kill":
        print("about to be killed", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    sys.exit(3)
    """
)


class ScriptSupervisor(Supervisor):
    """The real supervisor with TRAINER as the trainer's command."""

    how = "fail"

    def plan(self, spec, spec_path):
        super().plan(spec, spec_path)
        argv = (sys.executable, "-c", TRAINER, self.how)
        return [NodeLaunch(0, "127.0.0.1", True, Launch(1, 1, 0, "127.0.0.1", 1), argv)]


@pytest.fixture(params=["sqlite", "postgres"])
def env(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[tuple[JobRepo, Settings]]:
    admin_url = request.getfixturevalue("pg_admin_url") if request.param == "postgres" else None
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if admin_url is None else create_pg_database(admin_url)
    monkeypatch.setattr(supervisor_module, "RECORD_RETRY_DELAYS", (0.01, 0.01), raising=False)
    settings = Settings(
        data_dir=tmp_path / "data", database_url=url, heartbeat_interval_s=0.2, cancel_grace_s=2
    )
    repo = open_repo(settings)
    try:
        yield repo, settings
    finally:
        repo.db.dispose()
        if request.param == "postgres":
            drop_pg_database(admin_url, url)


def submit(repo: JobRepo, **top: Any) -> str:
    spec = {"kind": "pretrain", "name": "p", "config": {"schedule": {"steps": 3}}, **top}
    return repo.submit(parse_spec(spec).model_dump(mode="json"), queue="sgmim").job.id


def run_attempt(repo: JobRepo, settings: Settings, job_id: str, how: str) -> str:
    attempt = repo.claim_job(job_id, "w")
    assert attempt is not None
    sup = ScriptSupervisor(repo, settings, job_id, attempt, "w")
    sup.how = how
    return sup.run()


def trainer_starts(repo: JobRepo, job_id: str) -> int:
    return sum(row.line == "fake trainer up" for row in repo.logs_tail(job_id, 1000))


def test_a_nul_byte_in_the_trainer_output_fails_the_job_once_with_the_real_error(env):
    repo, settings = env
    job_id = submit(repo)
    assert run_attempt(repo, settings, job_id, "nul") == "failed"
    job = repo.get(job_id)
    assert (job.status, job.attempt, job.restarts) == ("failed", 1, 0)
    assert job.error.startswith("trainer exited with code 3")
    assert "CUDA error at \ufffd byte: the real reason" in job.error
    with repo.db.read() as s:
        assert list(s.execute(select(Attempt.error).where(Attempt.job_id == job_id)).scalars()) == [job.error]
    assert not (settings.run_dir(job_id) / ".worker-outcome.json").exists()


def test_an_outcome_the_database_refused_is_recorded_by_the_next_attempt_without_a_rerun(env, monkeypatch):
    repo, settings = env
    job_id = submit(repo)

    def database_gone(*args: Any, **kwargs: Any) -> bool:
        raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection"))

    with monkeypatch.context() as patch:
        patch.setattr(repo, "finish_job", database_gone)
        assert run_attempt(repo, settings, job_id, "fail") == "error"
    assert repo.get(job_id).status == "running"
    assert repo.requeue(job_id, "worker lost (test)") == "queued"  # what the reaper does next
    assert run_attempt(repo, settings, job_id, "fail") == "failed"
    job = repo.get(job_id)
    assert job.status == "failed" and job.attempt == 2
    assert job.error.startswith("trainer exited with code 3 (")
    assert trainer_starts(repo, job_id) == 1, "the job must not run again"


def test_a_trainer_killed_by_a_signal_is_retried_within_max_restarts_and_named(env):
    repo, settings = env
    job_id = submit(repo, max_restarts=1)
    assert run_attempt(repo, settings, job_id, "kill") == "queued"
    job = repo.get(job_id)
    assert (job.status, job.restarts, job.enqueued_at) == ("queued", 1, None)  # the reaper sends it
    assert job.error.startswith("trainer was killed by SIGKILL")
    assert run_attempt(repo, settings, job_id, "kill") == "failed"
    job = repo.get(job_id)
    assert job.status == "failed" and job.attempt == 2
    assert "trainer was killed by SIGKILL" in job.error and "max_restarts (1) exhausted" in job.error
    assert trainer_starts(repo, job_id) == 2
