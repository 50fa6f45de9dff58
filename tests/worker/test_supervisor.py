"""The supervisor in this process against a SQLite database, with a stand-in trainer (a few
lines of Python writing what the real one writes): fast checks of what it records, of parent
resolution, of losing ownership, and of the task's claim."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from service.db import open_repo
from service.db.repo import JobRepo
from service.settings import Settings
from sgmim.train.launch import Launch
from tests.worker.conftest import job_processes, wait_for
from worker import tasks
from worker.multinode import NodeLaunch
from worker.supervisor import Supervisor

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    run_dir = sys.argv[1]
    code, steps, pause = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    json.dump({"total_steps": steps}, open(os.path.join(run_dir, "run_info.json"), "w"))
    print("fake trainer up", flush=True)
    for step in range(1, steps + 1):
        with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, "epoch": step / 2, "loss": 1.0 / step, "lr": 0.1,
                                "note": "text is not a metric", "time": time.time()}) + "\\n")
        tag = os.path.join(run_dir, "checkpoints", f"global_step{step}")
        os.makedirs(tag, exist_ok=True)
        open(os.path.join(tag, "model_states.pt"), "wb").write(b"x" * 100)
        open(os.path.join(run_dir, "checkpoints", "latest"), "w").write(f"global_step{step}")
        old = os.path.join(run_dir, "checkpoints", f"global_step{step - 2}")
        if os.path.isdir(old):  # keep 2
            import shutil
            shutil.rmtree(old)
        print(f"step {step}/{steps}", flush=True)
        time.sleep(pause)
    if code:
        print("something went badly wrong", file=sys.stderr, flush=True)
        sys.exit(code)
    os.makedirs(os.path.join(run_dir, "export"), exist_ok=True)
    open(os.path.join(run_dir, "export", "model.safetensors"), "wb").write(b"m" * 1234)
    json.dump({"task": "depth", "metrics": {"abs_rel": 0.25, "delta1": float("nan")}},
              open(os.path.join(run_dir, "eval.json"), "w"))
    print("done", flush=True)
    """
)


class FakeTrainerSupervisor(Supervisor):
    """The real supervisor, with the trainer's command swapped for FAKE_TRAINER."""

    code, steps, pause = 0, 3, 0.05

    def plan(self, spec, spec_path):
        super().plan(spec, spec_path)  # the checks still run
        argv = (
            sys.executable,
            "-c",
            FAKE_TRAINER,
            str(self.run_dir),
            str(self.code),
            str(self.steps),
            str(self.pause),
        )
        return [NodeLaunch(0, "127.0.0.1", True, Launch(1, 1, 0, "127.0.0.1", 1), argv)]


@pytest.fixture
def env(tmp_path: Path) -> tuple[JobRepo, Settings]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        heartbeat_interval_s=0.2,
        cancel_grace_s=2,
    )
    repo = open_repo(settings)
    yield repo, settings
    repo.db.dispose()


def submit(repo: JobRepo, settings: Settings, spec: dict[str, Any]) -> str:
    from sgmim.spec import parse_spec

    data = parse_spec(spec).model_dump(mode="json")
    return repo.submit(data, queue="sgmim").job.id


PRETRAIN = {"kind": "pretrain", "name": "p", "config": {"schedule": {"steps": 3}}}
FINETUNE = {"kind": "finetune", "name": "f", "config": {"schedule": {"steps": 3}}}


def succeeded_parent(repo: JobRepo, settings: Settings, spec: dict[str, Any] = PRETRAIN) -> str:
    parent = submit(repo, settings, spec)
    attempt = repo.claim_job(parent, "w")
    assert repo.finish_job(parent, attempt, "succeeded")
    return parent


def test_success_records_metrics_logs_checkpoints_export_and_evaluation(env):
    repo, settings = env
    parent = succeeded_parent(repo, settings)
    export = settings.run_dir(parent) / "export" / "encoder.safetensors"
    export.parent.mkdir(parents=True)
    export.write_bytes(b"e")
    job_id = submit(repo, settings, {**FINETUNE, "parent": {"job_id": parent}})
    attempt = repo.claim_job(job_id, "w")
    assert FakeTrainerSupervisor(repo, settings, job_id, attempt, "w@box").run() == "succeeded"

    job = repo.get(job_id)
    assert job.status == "succeeded" and job.error is None
    assert job.step == 3 and job.total_steps == 3
    points = repo.metrics(job_id)
    assert sorted({p.name for p in points}) == ["loss", "lr"]
    assert [p.step for p in points if p.name == "loss"] == [1, 2, 3]
    lines = [row.line for row in repo.logs_tail(job_id, 100)]
    assert "fake trainer up" in lines and "step 3/3" in lines and "done" in lines
    assert lines[-1].endswith("[worker] run finished")
    ckpts = {c.name: c for c in repo.checkpoints(job_id)}
    assert sorted(ckpts) == ["global_step2", "global_step3", "model"], "pruned tags are forgotten"
    assert ckpts["model"].kind == "model" and ckpts["model"].size_bytes == 1234
    assert ckpts["model"].path == "export/model.safetensors"
    assert ckpts["global_step3"].kind == "deepspeed" and ckpts["global_step3"].size_bytes == 100
    assert repo.evaluation(job_id) == {"task": "depth", "metrics": {"abs_rel": 0.25, "delta1": None}}
    written = json.loads((settings.run_dir(job_id) / "spec.json").read_text())
    assert written["config"]["init_path"] == str(export), "init: parent resolved to the parent's export"


def test_a_run_shorter_than_a_heartbeat_still_records_its_progress(env):
    repo, settings = env
    settings.heartbeat_interval_s = 3600
    job_id = submit(repo, settings, PRETRAIN)
    attempt = repo.claim_job(job_id, "w")
    assert FakeTrainerSupervisor(repo, settings, job_id, attempt, "w@box").run() == "succeeded"
    job = repo.get(job_id)
    assert (job.step, job.total_steps, job.epoch) == (3, 3, 1.5)


def test_nonzero_exit_fails_with_the_code_and_the_last_log_lines(env):
    repo, settings = env
    job_id = submit(repo, settings, PRETRAIN)
    attempt = repo.claim_job(job_id, "w")
    sup = FakeTrainerSupervisor(repo, settings, job_id, attempt, "w")
    sup.code = 3
    assert sup.run() == "failed"
    job = repo.get(job_id)
    assert job.status == "failed"
    first, *rest = job.error.splitlines()
    assert first == "trainer exited with code 3 (non-finite loss or gradient):"
    assert "something went badly wrong" in rest and "step 3/3" in rest
    assert len(rest) <= 20
    assert [r.line for r in repo.logs_tail(job_id, 1)][0].endswith(
        "[worker] trainer exited with code 3 (non-finite loss or gradient)"
    )


def test_a_missing_parent_artifact_fails_before_anything_starts(env):
    repo, settings = env
    parent = succeeded_parent(repo, settings)  # succeeded, but its export is gone
    job_id = submit(repo, settings, {**FINETUNE, "parent": {"job_id": parent}})
    attempt = repo.claim_job(job_id, "w")
    assert FakeTrainerSupervisor(repo, settings, job_id, attempt, "w").run() == "failed"
    job = repo.get(job_id)
    missing = settings.run_dir(parent) / "export" / "encoder.safetensors"
    assert job.error == f"the exported encoder of parent job {parent} is missing: {missing} does not exist"
    assert not (settings.run_dir(job_id) / "metrics.jsonl").exists()
    assert "cannot start" in repo.logs_tail(job_id, 1)[0].line


def test_parent_checkpoint_and_evaluate_parents_resolve_to_their_files(env):
    repo, settings = env
    pre = succeeded_parent(repo, settings)
    tag = settings.run_dir(pre) / "checkpoints" / "global_step3"
    tag.mkdir(parents=True)
    repo.record_checkpoint(pre, "global_step3", "deepspeed", 3, 1, "checkpoints/global_step3")
    fine = succeeded_parent(repo, settings, {**FINETUNE, "config": {"init": "file", "init_path": "/x"}})
    model = settings.run_dir(fine) / "export" / "model.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"m")
    sup = Supervisor(repo, settings, "unused", 1)
    spec = sup.resolve_spec({**FINETUNE, "parent": {"job_id": pre, "checkpoint": "global_step3"}})
    assert spec.config.init_path == str(tag)
    spec = sup.resolve_spec({"kind": "evaluate", "name": "e", "parent": {"job_id": fine}})
    assert spec.config.init_path == str(model)
    with pytest.raises(Exception, match="has no checkpoint named 'global_step9'"):
        sup.resolve_spec({**FINETUNE, "parent": {"job_id": pre, "checkpoint": "global_step9"}})


def test_more_gpus_than_the_box_has_fails_clearly(env, monkeypatch):
    repo, settings = env
    monkeypatch.setattr("worker.supervisor.gpu_count", lambda: 2)
    job_id = submit(repo, settings, {**PRETRAIN, "resources": {"gpus": 4}})
    attempt = repo.claim_job(job_id, "w")
    assert FakeTrainerSupervisor(repo, settings, job_id, attempt, "w").run() == "failed"
    assert repo.get(job_id).error == "the job asks for resources.gpus=4 per node, but this box has 2 GPU(s)"


def test_multi_node_without_a_hostfile_fails_clearly(env):
    repo, settings = env
    job_id = submit(repo, settings, {**PRETRAIN, "resources": {"gpus": 1, "nodes": 2}})
    attempt = repo.claim_job(job_id, "w")
    assert Supervisor(repo, settings, job_id, attempt, "w").run() == "failed"
    assert "SGMIM_HOSTFILE" in repo.get(job_id).error


def start_long_run(repo: JobRepo, settings: Settings, job_id: str) -> tuple[threading.Thread, list[str]]:
    """Claim the job and supervise a fake run of 1000 slow steps in a thread; the list gets
    the supervisor's outcome when it returns."""
    attempt = repo.claim_job(job_id, "w")
    sup = FakeTrainerSupervisor(repo, settings, job_id, attempt, "w")
    sup.steps, sup.pause = 1000, 0.1
    result: list[str] = []
    thread = threading.Thread(target=lambda: result.append(sup.run()))
    thread.start()
    return thread, result


def test_an_attempt_that_lost_its_job_stops_its_run_and_writes_nothing(env):
    repo, settings = env
    job_id = submit(repo, settings, PRETRAIN)
    thread, result = start_long_run(repo, settings, job_id)
    try:
        wait_for(lambda: job_processes(job_id), 20, "the fake trainer")
        assert repo.requeue(job_id, "worker lost (test)") == "queued"  # what the reaper does
        thread.join(15)
        assert result == ["lost"]
    finally:
        thread.join(30)
    assert not job_processes(job_id)
    job = repo.get(job_id)
    assert job.status == "queued" and job.error == "worker lost (test)", "the job was left alone"


def test_cancel_stops_the_group_and_ends_cancelled(env):
    repo, settings = env
    job_id = submit(repo, settings, PRETRAIN)
    thread, result = start_long_run(repo, settings, job_id)
    try:
        wait_for(lambda: repo.metrics(job_id), 20, "metrics")
        started = time.monotonic()
        repo.cancel(job_id)
        thread.join(15)
        assert result == ["cancelled"] and time.monotonic() - started < 5
    finally:
        thread.join(30)
    assert repo.get(job_id).status == "cancelled"
    assert not job_processes(job_id)


def test_the_task_does_nothing_for_a_job_that_is_not_queued(env, monkeypatch):
    """A queued job cancelled before a worker took its message never starts; a duplicate
    message for a running job starts nothing."""
    repo, settings = env
    monkeypatch.setenv("SGMIM_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SGMIM_DATABASE_URL", settings.database_url)
    monkeypatch.setattr(tasks, "_runtimes", {})
    cancelled = submit(repo, settings, PRETRAIN)
    repo.cancel(cancelled)
    running = submit(repo, settings, PRETRAIN)
    assert repo.claim_job(running, "other") == 1
    try:
        assert tasks.execute(cancelled, "w") == "not-claimed"
        assert tasks.execute(running, "w") == "not-claimed"
        assert tasks.execute("nosuchjob", "w") == "not-claimed"
    finally:
        for rt in tasks._runtimes.values():
            rt.repo.db.dispose()
    assert repo.get(cancelled).status == "cancelled" and repo.get(cancelled).attempt == 0
    assert repo.get(running).worker == "other" and repo.get(running).attempt == 1
    assert not settings.run_dir(cancelled).exists() and not settings.run_dir(running).exists()


def test_the_stored_spec_is_validated_once_per_attempt(env, monkeypatch):
    """One validation per process boundary: filling in init_path must not validate again."""
    import worker.supervisor as supervisor_module

    repo, settings = env
    pre = succeeded_parent(repo, settings)
    export = settings.run_dir(pre) / "export" / "encoder.safetensors"
    export.parent.mkdir(parents=True)
    export.write_bytes(b"e")
    calls = []
    real = supervisor_module.parse_spec
    monkeypatch.setattr(supervisor_module, "parse_spec", lambda data: calls.append(1) or real(data))
    spec = Supervisor(repo, settings, "unused", 1).resolve_spec({**FINETUNE, "parent": {"job_id": pre}})
    assert spec.config.init_path == str(export)
    assert len(calls) == 1
