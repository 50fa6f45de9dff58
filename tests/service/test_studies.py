"""/api/v1/studies through a real uvicorn on both databases, the test playing the worker.

The property here is the route's: a posted grid becomes chains submitted stage by stage by the
service itself (also across an API restart), posting it again submits nothing, a stopped cell
is retried alone, and the results table equals a hand computation from the cells' eval.json;
a cancelled study stops (its jobs cancelled, nothing more submitted) until a retry, and is
deleted only once none of its jobs is in flight.
So the jobs are claimed and finished through the repository, as a worker would, without
training; a real worker runs studies in tests/cli/test_study.py. The cancel racing a pass of
another API process is played with two `Studies` (one per process) on one database, the cancel
injected at a chosen point of the pass: no job of a cancelled study may become claimable.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from service.broker import Broker, Dispatcher
from service.db import migrate
from service.db.models import Job, Study
from service.db.repo import JobRepo
from service.db.session import Database
from service.studies import Studies
from sgmim.spec.study import inline_study, load_study
from tests.service import study_worker
from tests.service.conftest import (
    ROOT,
    Backend,
    broker_messages,
    create_pg_database,
    drop_pg_database,
    make_settings,
    own_database,
    start_uvicorn,
    stop,
)

JOBS = ROOT / "examples" / "jobs"
# what each cell's evaluation reports: (rmse, delta1) by (row, seed)
REPORTED = {("simmim", 0): (1.40, 0.30), ("simmim", 1): (1.52, 0.26),
            ("sgmim", 0): (1.31, 0.37), ("sgmim", 1): (1.47, 0.29)}


@dataclass
class Stack:
    settings: object
    repo: JobRepo
    log: Path
    url: str = ""
    proc: object = None

    def start(self) -> None:
        self.proc, self.url = start_uvicorn(self.settings, {"SGMIM_STUDY_INTERVAL_S": "0.2"}, self.log)

    def get(self, path: str, **params) -> httpx.Response:
        return httpx.get(f"{self.url}/api/v1{path}", params=params, timeout=10)

    def post(self, path: str, body=None, **params) -> httpx.Response:
        return httpx.post(f"{self.url}/api/v1{path}", json=body, params=params, timeout=30)

    def delete(self, path: str) -> httpx.Response:
        return httpx.delete(f"{self.url}/api/v1{path}", timeout=30)


@pytest.fixture(scope="module")
def stack(backend: Backend, request, tmp_path_factory) -> Iterator[Stack]:
    """Its own database: no other API process may advance these studies."""
    folder = tmp_path_factory.mktemp(f"studies-{backend.name}")
    admin_url = request.getfixturevalue("pg_admin_url") if backend.name == "postgres" else ""
    url = create_pg_database(admin_url) if admin_url else f"sqlite:///{folder / 'sgmim.db'}"
    db = Database(url)
    stack = Stack(make_settings(folder, url), JobRepo(db), folder / "uvicorn.log")
    stack.start()
    try:
        yield stack
    finally:
        stop(stack.proc)
        db.dispose()
        if admin_url:
            drop_pg_database(admin_url, url)


def study_body(tmp_path: Path, name: str = "tiny-methods", **changes) -> dict:
    study = {"name": name, "pretrain": str(JOBS / "pretrain-tiny.yaml"),
             "finetune": str(JOBS / "finetune-depth-tiny.yaml"),
             "evaluate": str(JOBS / "evaluate-depth-tiny.yaml"),
             "axes": {"method": ["simmim", "sgmim"]}, "seeds": [0, 1], **changes}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return inline_study(*load_study(path))


def job_count(stack: Stack) -> int:
    return len(stack.get("/jobs", limit=200).json()["items"])


def wait_for(stack: Stack, name: str, done, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        study = stack.get(f"/studies/{name}").json()
        if done(study):
            return study
        assert time.monotonic() < deadline, json.dumps(study["cells"], indent=1)
        time.sleep(0.1)


def at(stage: str, status: str):
    return lambda study: all(c["stage"] == stage and c["status"] == status for c in study["cells"])


def finish_due(stack: Stack, study: dict, stage: str, fail: frozenset[str] = frozenset()) -> None:
    study_worker.finish_due(stack.repo, stack.settings, study, stage, REPORTED, fail)


def test_a_study_advances_replays_retries_and_tabulates(stack: Stack, tmp_path):
    body = study_body(tmp_path)
    first = stack.post("/studies", body)
    assert first.status_code == 201, first.text
    assert first.json()["submitted"] == 4 and first.json()["n_cells"] == 4
    assert [c["id"] for c in first.json()["cells"]] == ["simmim-s0", "simmim-s1", "sgmim-s0", "sgmim-s1"]
    assert at("pretrain", "queued")(first.json())

    again = stack.post("/studies", body)
    assert again.status_code == 200 and again.json()["submitted"] == 0
    assert job_count(stack) == 4

    # the API restarts while the pretraining runs: the stored study is advanced by the new one
    stop(stack.proc)
    finish_due(stack, first.json(), "pretrain", fail=frozenset({"simmim-s1"}))
    stack.start()
    assert [s["name"] for s in stack.get("/studies").json()["items"]] == ["tiny-methods"]
    # the fine-tuning jobs submitted, not only the cells moved on: finish_due plays queued jobs
    study = wait_for(stack, "tiny-methods", lambda s: sum(
        c["stages"]["finetune"]["status"] == "queued" for c in s["cells"]) == 3)
    failed = next(c for c in study["cells"] if c["id"] == "simmim-s1")
    assert (failed["stage"], failed["status"]) == ("pretrain", "failed")
    assert failed["stages"]["pretrain"]["error"] == "boom"
    assert study["stopped"] == 1 and study["done"] == 0

    finish_due(stack, study, "finetune")
    study = wait_for(stack, "tiny-methods", lambda s: sum(
        c["stage"] == "evaluate" and c["status"] == "queued" for c in s["cells"]) == 3)
    finish_due(stack, study, "evaluate")
    study = wait_for(stack, "tiny-methods", lambda s: s["done"] == 3 and not s["active"])
    assert job_count(stack) == 1 + 3 * 3

    # the failed cell alone is retried: its pretraining job resumes, nothing else is submitted
    made = job_count(stack)
    retried = stack.post("/studies/tiny-methods/retry", cell="simmim-s1")
    assert retried.status_code == 200, retried.text
    cell = next(c for c in retried.json()["cells"] if c["id"] == "simmim-s1")
    assert (cell["stage"], cell["status"]) == ("pretrain", "queued")
    assert cell["stages"]["pretrain"]["job_id"] == failed["stages"]["pretrain"]["job_id"]
    assert retried.json()["submitted"] == 0 and job_count(stack) == made
    for stage in ("pretrain", "finetune", "evaluate"):
        study = wait_for(stack, "tiny-methods", lambda s, stage=stage: any(
            c["stages"][stage]["status"] == "queued" for c in s["cells"]))
        finish_due(stack, study, stage)
    study = wait_for(stack, "tiny-methods", lambda s: s["done"] == 4 and not s["active"])
    assert job_count(stack) == made + 2
    assert stack.post("/studies", body).json()["submitted"] == 0 and job_count(stack) == made + 2

    check_results(stack, study)
    # cancelling a finished study changes nothing
    study = stack.get("/studies/tiny-methods").json()
    cancelled = stack.post("/studies/tiny-methods/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["updated_at"] == study["updated_at"] and not cancelled.json()["active"]
    assert cancelled.json()["done"] == 4 and job_count(stack) == made + 2


def stage_of(study: dict, cell: str, stage: str) -> dict:
    return next(c for c in study["cells"] if c["id"] == cell)["stages"][stage]


def listed(stack: Stack, name: str) -> dict:
    """The study as GET /studies lists it (from its stored records, not the jobs' live status)."""
    return next(s for s in stack.get("/studies").json()["items"] if s["name"] == name)


def test_a_cancelled_study_stops_until_retried_and_is_deleted_once_nothing_runs(stack: Stack, tmp_path):
    body = study_body(tmp_path, name="lifecycle", seeds=[0])
    posted = stack.post("/studies", body).json()
    running = stage_of(posted, "simmim-s0", "pretrain")["job_id"]
    queued = stage_of(posted, "sgmim-s0", "pretrain")["job_id"]
    attempt = stack.repo.claim_job(running, "test-worker")
    assert attempt is not None

    answer = stack.post("/studies/lifecycle/cancel")
    assert answer.status_code == 200, answer.text
    study = answer.json()
    assert not study["active"] and study["state"] == "cancelling" and study["cancelled_at"] is not None
    assert stage_of(study, "simmim-s0", "pretrain")["status"] == "cancelling"  # until its worker stops it
    assert stage_of(study, "sgmim-s0", "pretrain")["status"] == "cancelled"
    assert stack.get(f"/jobs/{queued}").json()["status"] == "cancelled"
    summary = listed(stack, "lifecycle")
    assert (summary["state"], summary["stopped"]) == ("cancelling", 1)
    again = stack.post("/studies/lifecycle/cancel")
    assert again.status_code == 200 and again.json()["updated_at"] == study["updated_at"]
    assert again.json()["cancelled_at"] == study["cancelled_at"]
    # posting it again (`sgmim study run` once more) leaves it cancelled and says so
    reposted = stack.post("/studies", body)
    assert reposted.status_code == 200, reposted.text
    assert reposted.json()["submitted"] == 0 and reposted.json()["cancelled_at"] == study["cancelled_at"]
    assert reposted.json()["state"] == "cancelling" and not reposted.json()["active"]

    refused = stack.delete("/studies/lifecycle")
    assert refused.status_code == 409, refused.text
    assert refused.json()["job_id"] == running and refused.json()["status"] == "cancelling"
    assert "cancel it first" in refused.json()["detail"]

    assert stack.repo.finish_job(running, attempt, "cancelled")
    # the background loop refreshes the cancelled study (statuses only) until nothing is in flight
    deadline = time.monotonic() + 30
    while (summary := listed(stack, "lifecycle"))["state"] != "cancelled":
        assert time.monotonic() < deadline, summary
        time.sleep(0.1)
    assert summary["stopped"] == 2 and summary["done"] == 0 and not summary["active"]
    study = stack.get("/studies/lifecycle").json()
    assert [(c["stage"], c["status"]) for c in study["cells"]] == [("pretrain", "cancelled")] * 2
    assert study["stopped"] == 2 and study["state"] == "cancelled"
    assert all(stage["job_id"] is None for c in study["cells"] for stage in
               (c["stages"]["finetune"], c["stages"]["evaluate"]))

    # a retry resumes the cancelled jobs and the service advances the study again
    retried = stack.post("/studies/lifecycle/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["active"] and retried.json()["submitted"] == 0
    assert retried.json()["state"] == "running" and retried.json()["cancelled_at"] is None
    assert listed(stack, "lifecycle")["cancelled_at"] is None
    assert at("pretrain", "queued")(retried.json())
    assert stage_of(retried.json(), "simmim-s0", "pretrain")["job_id"] == running
    assert stack.delete("/studies/lifecycle").status_code == 409
    finish_due(stack, retried.json(), "pretrain")
    study = wait_for(stack, "lifecycle", at("finetune", "queued"))
    finetunes = [stage_of(study, cell, "finetune")["job_id"] for cell in ("simmim-s0", "sgmim-s0")]

    assert at("finetune", "cancelled")(stack.post("/studies/lifecycle/cancel").json())
    deleted = stack.delete("/studies/lifecycle")
    assert deleted.status_code == 204 and deleted.content == b""
    assert stack.get("/studies/lifecycle").status_code == 404
    assert "lifecycle" not in [s["name"] for s in stack.get("/studies").json()["items"]]
    for job_id in (running, queued, *finetunes):  # the jobs stay
        assert stack.get(f"/jobs/{job_id}").status_code == 200
    assert stack.delete("/studies/lifecycle").status_code == 404


@dataclass
class Process:
    """One API process's studies: its own engine, broker and dispatcher on the shared database."""
    db: Database
    studies: Studies


@pytest.fixture
def two_processes(backend: Backend, request, tmp_path) -> Iterator[tuple[Process, Process]]:
    """A database of its own: no API process's loop advances these studies but the test's."""
    with own_database(backend, request, tmp_path) as url:
        processes = []
        for index in range(2):
            settings = make_settings(tmp_path / f"process-{index}", url)
            db = Database(url)
            migrate.upgrade(db.engine)
            repo, broker = JobRepo(db), Broker(settings)
            broker.prepare()
            processes.append(Process(db, Studies(repo, broker, Dispatcher(repo, broker), settings)))
        try:
            yield processes[0], processes[1]
        finally:
            for process in processes:
                process.studies.broker.close()
                process.db.dispose()


def study_jobs(repo: JobRepo) -> dict[str, str]:
    """Every job of the database (the study's only) → its status."""
    with repo.db.read() as s:
        return dict(s.execute(select(Job.id, Job.status)).all())


@pytest.mark.parametrize("lands", ["before the first submit", "before the save"])
def test_a_cancel_from_another_process_during_a_pass_holds(two_processes, tmp_path, monkeypatch, lands):
    """Process A's background pass reads the running study; process B cancels it; then A goes on
    (to its submits, or to saving the records of the jobs it submitted). Nothing A does after
    the cancel may leave a job of the study in flight or the study advanced."""
    a, b = two_processes
    body = study_body(tmp_path, name="raced", seeds=[0])
    posted, created = a.studies.post(body)
    assert created and posted.submitted == 2
    repo = a.studies.repo
    for job_id in study_jobs(repo):  # the pretraining succeeds: the next pass submits the fine-tuning
        attempt = repo.claim_job(job_id, "test-worker")
        assert attempt is not None and repo.finish_job(job_id, attempt, "succeeded")

    cancelled = []

    def cancel_through_b() -> None:
        if not cancelled:
            cancelled.append(b.studies.cancel("raced"))

    # "before the first submit": after A has read the study (it expands its cells next);
    # "before the save": after A has submitted the fine-tuning jobs, as it writes their records
    target = (a.studies, "cells_of") if lands == "before the first submit" else (repo, "save_study_cells")
    original = getattr(*target)

    def hooked(*args, **kwargs):
        cancel_through_b()
        return original(*args, **kwargs)

    monkeypatch.setattr(*target, hooked)
    a.studies.advance_active()
    monkeypatch.undo()
    assert cancelled, "the hook did not run"

    jobs = study_jobs(repo)
    in_flight = {job_id: status for job_id, status in jobs.items() if status in ("queued", "running")}
    assert in_flight == {}, "a job submitted by the pass that raced the cancel goes on"
    assert len(jobs) == (2 if lands == "before the first submit" else 4)
    study = repo.study("raced")
    assert study.cancelled_at is not None and not study.active, "the pass undid the cancel"

    for process in (a, b, a):  # later passes of either process, and the study posted again
        process.studies.advance_active()
        again, created = process.studies.post(body)
        assert not created and again.submitted == 0 and again.study.cancelled_at == study.cancelled_at
    assert study_jobs(repo) == jobs

    retried = b.studies.advance("raced", retry=[])  # clears the cancel: the fine-tuning goes on
    assert retried.study.cancelled_at is None and retried.study.active
    finetunes = {c: r["jobs"]["finetune"] for c, r in retried.study.cells.items()}
    assert {r["status"] for r in finetunes.values()} == {"queued"}
    assert len(study_jobs(repo)) == 4


def sent_and_claimed(processes: tuple[Process, ...], claims: list[str]) -> set[str]:
    """What a worker could do now: another process's dispatcher sends every unsent queued job,
    and a worker claims the job of each message any process sent (appended to `claims`); the
    ids of every message sent so far."""
    processes[-1].studies.dispatcher.drain()
    sent = {m["args"][0] for p in processes for m in broker_messages(p.studies.settings)}
    repo = processes[0].studies.repo
    claims.extend(job_id for job_id in sorted(sent) if repo.claim_job(job_id, "test-worker") is not None)
    return sent


@pytest.mark.parametrize("queues", ["submit", "resume"])
def test_a_cancel_landing_just_before_a_pass_queues_a_job_leaves_nothing_claimable(
        two_processes, tmp_path, monkeypatch, queues):
    """Process B cancels the study at the last moment before process A's pass stores a job of
    it: A's submit of a fine-tuning job, or its retry's resume of a failed pretraining, after
    every check A makes before it. A worker looking right then (B's dispatcher sends what is
    queued, the worker claims what was sent) must find no job of the cancelled study."""
    a, b = two_processes
    body = study_body(tmp_path, name="raced", seeds=[0])
    assert a.studies.post(body)[0].submitted == 2
    repo = a.studies.repo
    for job_id in study_jobs(repo):  # the pretraining ends: a pass submits, or a retry resumes, next
        attempt = repo.claim_job(job_id, "test-worker")
        assert attempt is not None and repo.finish_job(job_id, attempt, "succeeded" if queues == "submit"
                                                        else "failed")
    before = study_jobs(repo)
    cancelled, claims = [], []
    original = getattr(repo, queues)

    def cancel_then_queue(*args, **kwargs):
        if not cancelled:
            cancelled.append(b.studies.cancel("raced"))
        try:
            return original(*args, **kwargs)
        finally:
            sent_and_claimed((a, b), claims)

    monkeypatch.setattr(repo, queues, cancel_then_queue)
    if queues == "submit":
        a.studies.advance_active()
    else:
        a.studies.advance("raced", retry=[])
    monkeypatch.undo()
    assert cancelled, "the hook did not run"

    sent = sent_and_claimed((a, b), claims)
    assert (sent, claims) == (set(), []), "a job of the cancelled study was queued, sent and claimed"
    assert study_jobs(repo) == before, "the pass stored a job after the cancel"
    study = repo.study("raced")
    assert study.cancelled_at == cancelled[0].cancelled_at and not study.active


def cancel_could_be_stored_now(db: Database, name: str) -> bool:
    """Whether the lock a cancel's UPDATE of the study needs is free right now, tried without
    waiting on a connection of its own (Postgres: the study row's; SQLite: the one write lock);
    nothing is changed."""
    if db.dialect == "postgresql":
        row = select(Study.name).where(Study.name == name).with_for_update(nowait=True, key_share=True)
        with db.engine.connect() as conn:
            try:
                conn.execute(row)
                return True
            except OperationalError:  # LockNotAvailable: another transaction holds the row
                return False
            finally:
                conn.rollback()
    connection = sqlite3.connect(make_url(db.url).database, timeout=0, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:  # database is locked: another transaction writes
        return False
    finally:
        connection.close()


def test_no_cancel_is_stored_while_a_pass_inserts_a_job_of_the_study(two_processes, tmp_path):
    """The instant inside the transaction: while process A's pass inserts a job of the study, a
    cancel (process B's) cannot be stored but waits for that transaction, which found the study
    not cancelled, to end. So a cancel lands before the insert, which is then refused, or after
    the commit, when the job is in flight like any other (and the pass withdraws it)."""
    a, b = two_processes
    assert a.studies.post(study_body(tmp_path, name="raced", seeds=[0]))[0].submitted == 2
    repo = a.studies.repo
    for job_id in study_jobs(repo):  # the pretraining succeeds: the next pass submits the fine-tuning
        attempt = repo.claim_job(job_id, "test-worker")
        assert attempt is not None and repo.finish_job(job_id, attempt, "succeeded")
    during_inserts = []

    def probe(_conn, _cursor, statement: str, *_rest) -> None:
        if statement.lstrip().startswith("INSERT INTO jobs"):
            during_inserts.append(cancel_could_be_stored_now(b.db, "raced"))

    event.listen(a.db.engine, "before_cursor_execute", probe)
    try:
        a.studies.advance_active()
    finally:
        event.remove(a.db.engine, "before_cursor_execute", probe)
    assert during_inserts == [False, False], "a cancel could be stored while a job of the study was inserted"
    assert cancel_could_be_stored_now(b.db, "raced")  # once the pass's transactions ended


def check_results(stack: Stack, study: dict) -> None:
    """The table equals a hand computation from each cell's eval.json."""
    results = stack.get("/studies/tiny-methods/results").json()
    assert results["baseline"] == "simmim"
    by_row: dict[str, dict[int, dict]] = {}
    for cell in study["cells"]:
        run = stack.settings.run_dir(cell["stages"]["evaluate"]["job_id"])
        metrics = json.loads((run / "eval.json").read_text())["metrics"]
        by_row.setdefault(cell["row"], {})[cell["seed"]] = metrics
    for metric in ("rmse", "abs_rel", "delta1"):
        rows = {r["row"]: r for r in results["metrics"][metric]}
        for row, seeds in by_row.items():
            xs = [seeds[0][metric], seeds[1][metric]]
            assert rows[row]["n"] == 2
            assert math.isclose(rows[row]["mean"], statistics.mean(xs), rel_tol=1e-12)
            assert math.isclose(rows[row]["std"], statistics.stdev(xs), rel_tol=1e-9)
        diffs = [by_row["sgmim"][s][metric] - by_row["simmim"][s][metric] for s in (0, 1)]
        assert math.isclose(rows["sgmim"]["diff"], statistics.mean(diffs), rel_tol=1e-9)
        half = 12.706204736174698 * statistics.stdev(diffs) / math.sqrt(2)  # t(0.975, 1 dof)
        assert math.isclose(rows["sgmim"]["ci_high"] - rows["sgmim"]["diff"], half, rel_tol=1e-6)
        assert rows["simmim"]["diff"] == 0 and rows["sgmim"]["n_pairs"] == 2
    csv = stack.get("/studies/tiny-methods/results.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("metric,row,n,mean,std") and len(lines) == 1 + 3 * 2
    sgmim_rmse = next(line for line in lines if line.startswith("rmse,sgmim,2,"))
    assert math.isclose(float(sgmim_rmse.split(",")[3]), statistics.mean([1.31, 1.47]))
    markdown = stack.get("/studies/tiny-methods/results.md").text
    assert "## delta1" in markdown and "| sgmim | 0.3300 ± 0.0566 | 2 |" in markdown


@pytest.mark.parametrize("changes, loc, message", [
    ({"axes": {"method": ["simmim", "mae"]}}, ["body", "axes"], "'mae' is not one of simmim, sgmim"),
    ({"seeds": [1, 1]}, ["body", "seeds"], "seeds must be distinct"),
    ({"axes": {"guidance.extractor": ["mlp", "cnn"]}},
     ["body", "cells", "guidance.extractor-cnn-s0", "pretrain", "config", "model", "guidance", "extractor"],
     "'mlp', 'transformer' or 'siamese'"),
    ({"pretrain": "examples/jobs/pretrain-tiny.yaml"}, ["body", "pretrain"], "give the base job inline"),
    ({"baseline": "mae"}, ["body"], "baseline 'mae' is not a row"),
    ({"finetune": {"kind": "evaluate", "name": "x"}}, ["body", "finetune"], "must have kind: finetune"),
    ({"grid": 1}, ["body", "grid"], "Extra inputs are not permitted"),
    ({"seeds": list(range(100)), "axes": {"method": ["simmim", "sgmim"], "loss.lambda_struct": [0, 1]}},
     ["body"], "the study has 400 cells"),
])
def test_bad_studies_are_refused_with_the_field_and_store_nothing(stack, tmp_path, changes, loc, message):
    body = {**study_body(tmp_path, name="bad-study"), **changes}
    before = job_count(stack)
    answer = stack.post("/studies", body)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert any(e["loc"] == loc and message in e["msg"] for e in detail), detail
    assert stack.get("/studies/bad-study").status_code == 404
    assert job_count(stack) == before


def test_data_paths_outside_the_roots_name_the_cell(stack: Stack, tmp_path):
    body = study_body(tmp_path, name="outside", variants=[
        {"name": "folder", "set": {"pretrain.config.data.source": "image_folder",
                                   "pretrain.config.data.root": "/etc"}}])
    answer = stack.post("/studies", body)
    assert answer.status_code == 422, answer.text
    error = answer.json()["detail"][0]
    assert error["loc"][:4] == ["body", "cells", "folder-simmim-s0", "pretrain"] and "/etc" in error["msg"]


def test_unknown_studies_and_cells(stack: Stack, tmp_path):
    assert stack.get("/studies/no-such-study").status_code == 404
    for answer in (stack.post("/studies/no-such-study/cancel"), stack.delete("/studies/no-such-study")):
        assert answer.status_code == 404 and answer.json() == {"detail": "study no-such-study not found"}
    assert stack.get("/studies/no-such-study/results").json() == {"detail": "study no-such-study not found"}
    assert stack.post("/studies", study_body(tmp_path, name="known", seeds=[3])).status_code == 201
    answer = stack.post("/studies/known/retry", cell="simmim-s9")
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "cell"]
    assert "no cell 'simmim-s9'; its cells: simmim-s3, sgmim-s3" in answer.json()["detail"][0]["msg"]
    empty = stack.post("/studies/known/retry", cell="")  # named as sent, quoted
    assert empty.status_code == 422 and "no cell ''; its cells" in empty.json()["detail"][0]["msg"]
    assert stack.post("/studies", [1]).status_code == 422
    assert stack.post("/studies", "not json").status_code == 422
