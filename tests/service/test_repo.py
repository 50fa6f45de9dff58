"""The repository at the database level (what the worker calls), on SQLite and Postgres."""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from service.db import migrate
from service.db.errors import IdempotencyConflict, InvalidTransition, JobNotFound
from service.db.models import Base
from service.db.repo import JobRepo, new_job_id
from service.db.session import Database
from tests.service.conftest import create_pg_database, drop_pg_database, submit_spec


def test_migrations_build_exactly_the_models_and_downgrade(backend, tmp_path, request):
    admin_url = request.getfixturevalue("pg_admin_url") if backend.name == "postgres" else ""
    url = create_pg_database(admin_url) if admin_url else f"sqlite:///{tmp_path / 'm.db'}"
    db = Database(url)
    try:
        migrate.upgrade(db.engine)
        assert migrate.current_revision(db.engine) == migrate.head_revision()
        with db.engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
            )
        assert diff == []
        migrate.upgrade(db.engine)  # idempotent
        migrate.downgrade(db.engine, "base")
        with db.engine.connect() as conn:
            assert db.engine.dialect.has_table(conn, "jobs") is False
    finally:
        db.dispose()
        if admin_url:
            drop_pg_database(admin_url, url)


def test_job_ids_are_unique_and_time_sortable():
    ids = [new_job_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 16 and i.isalnum() and i.islower() for i in ids[:100])


def test_claim_is_atomic_one_winner(repo: JobRepo):
    job_id = submit_spec(repo)
    barrier = threading.Barrier(8)

    def claim(i: int):
        barrier.wait()
        return repo.claim_job(job_id, f"w{i}")

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim, range(8)))
    winners = [r for r in results if r is not None]
    assert winners == [1]
    job = repo.get(job_id)
    assert job.status == "running" and job.attempt == 1 and job.worker.startswith("w")
    assert repo.claim_job(job_id, "late") is None
    assert repo.claim_job("nonexistent", "w") is None


def test_cancelled_queued_job_is_never_claimed(repo: JobRepo):
    job_id = submit_spec(repo)
    assert repo.cancel(job_id).status == "cancelled"
    assert repo.claim_job(job_id, "w") is None
    assert repo.get(job_id).status == "cancelled"


def test_state_machine_rejects_illegal_changes(repo: JobRepo):
    job_id = submit_spec(repo)
    with pytest.raises(InvalidTransition) as exc:
        repo.transition(job_id, "succeeded")
    assert exc.value.current == "queued"
    with pytest.raises(InvalidTransition):
        repo.resume(job_id)
    attempt = repo.claim_job(job_id, "w")
    with pytest.raises(InvalidTransition) as exc:
        repo.finish_job(job_id, attempt, "cancelled")  # cancelled only after a cancel request
    assert exc.value.current == "running"
    assert repo.finish_job(job_id, attempt + 1, "succeeded") is False  # not this attempt's job
    assert repo.finish_job(job_id, attempt, "succeeded") is True
    for action in (repo.cancel, repo.resume):
        with pytest.raises(InvalidTransition) as exc:
            action(job_id)
        assert exc.value.current == "succeeded"
    with pytest.raises(JobNotFound):
        repo.cancel("nope")


def test_cancel_running_then_finish_and_resume(repo: JobRepo):
    job_id = submit_spec(repo)
    attempt = repo.claim_job(job_id, "w")
    assert repo.cancel(job_id).status == "cancelling"
    assert repo.is_cancel_requested(job_id) is True
    assert repo.heartbeat(job_id, attempt) == "cancelling"
    assert repo.cancel(job_id).status == "cancelling"  # repeat: harmless
    assert repo.finish_job(job_id, attempt, "cancelled") is True
    assert repo.cancel(job_id).status == "cancelled"
    job = repo.resume(job_id)
    assert job.status == "queued" and job.finished_at is None and job.cancel_requested_at is None
    assert repo.claim_job(job_id, "w2") == 2
    statuses = [e.data["status"] for e in repo.events(job_id).events]
    assert statuses == ["queued", "running", "cancelling", "cancelled", "queued", "running"]


def test_heartbeat_ownership_and_progress(repo: JobRepo):
    job_id = submit_spec(repo)
    attempt = repo.claim_job(job_id, "w")
    assert repo.heartbeat(job_id, attempt, {"step": 7, "total_steps": 100, "epoch": 0.5}) == "running"
    job = repo.get(job_id)
    assert (job.step, job.total_steps, job.epoch) == (7, 100, 0.5)
    assert repo.requeue(job_id) == "queued"
    assert repo.heartbeat(job_id, attempt) is None  # the old attempt lost the job
    new = repo.claim_job(job_id, "w2")
    assert new == attempt + 1
    assert repo.heartbeat(job_id, attempt) is None
    assert repo.finish_job(job_id, attempt, "failed", "zombie") is False
    assert repo.heartbeat(job_id, new) == "running"


def test_requeue_respects_max_restarts_and_cancelling(repo: JobRepo):
    job_id = submit_spec(repo, max_restarts=1)
    repo.claim_job(job_id, "w")
    assert [s.id for s in repo.find_stale_running(0.0)] == [job_id]
    assert repo.find_stale_running(3600) == []
    assert repo.requeue(job_id) == "queued"
    assert repo.get(job_id).restarts == 1
    repo.claim_job(job_id, "w")
    assert repo.requeue(job_id) == "failed"
    job = repo.get(job_id)
    assert job.status == "failed" and "max_restarts" in job.error
    with pytest.raises(InvalidTransition):
        repo.requeue(job_id)
    other = submit_spec(repo)
    repo.claim_job(other, "w")
    repo.cancel(other)
    assert repo.requeue(other) == "cancelled"


def test_find_unclaimed_queued(repo: JobRepo):
    job_id = submit_spec(repo)
    assert [q.id for q in repo.find_unclaimed_queued(3600)] == [job_id]  # never sent
    repo.mark_enqueued(job_id)
    assert repo.find_unclaimed_queued(3600) == []
    time.sleep(0.01)
    assert [q.id for q in repo.find_unclaimed_queued(0.001)] == [job_id]
    repo.claim_job(job_id, "w")
    assert repo.find_unclaimed_queued(0.001) == []


def test_metrics_logs_and_status_share_one_sequence(repo: JobRepo):
    job_id = submit_spec(repo)  # seq 1: queued
    attempt = repo.claim_job(job_id, "w")  # seq 2: running
    last = repo.append_metrics(
        job_id,
        [
            {"step": 1, "epoch": 0.1, "name": "loss", "value": 1.5, "time": 100.0},
            {"step": 1, "epoch": 0.1, "name": "lr", "value": 1e-4, "time": 100.0},
            {"step": 2, "epoch": 0.2, "name": "loss", "value": float("nan"), "time": 101.0},
        ],
    )
    assert last == 5
    assert repo.append_logs(job_id, ["hello\n", "world"]) == 7
    assert repo.finish_job(job_id, attempt, "succeeded")
    batch = repo.events(job_id)
    assert [(e.seq, e.type) for e in batch.events] == [
        (1, "status"),
        (2, "status"),
        (3, "metric"),
        (4, "metric"),
        (5, "metric"),
        (6, "log"),
        (7, "log"),
        (8, "status"),
    ]
    assert batch.events[4].data["value"] is None  # NaN is stored as null
    assert batch.events[5].data["line"] == "hello"
    assert batch.status == "succeeded" and batch.last_seq == 8
    assert [e.seq for e in repo.events(job_id, after=5).events] == [6, 7, 8]
    assert [e.seq for e in repo.events(job_id, after=2, limit=2).events] == [3, 4]
    job = repo.get(job_id)
    assert job.last_metrics == {"loss": None, "lr": 1e-4} and job.step == 2
    assert [m.seq for m in repo.metrics(job_id, names=["loss"])] == [3, 5]
    assert [m.name for m in repo.metrics(job_id, after=3)] == ["lr", "loss"]
    assert [r.line for r in repo.logs_tail(job_id, 1)] == ["world"]
    with pytest.raises(ValueError):
        repo.append_metrics(job_id, [{"value": 1.0}])
    with pytest.raises(JobNotFound):
        repo.append_metrics("missing", [{"name": "x", "value": 1.0}])


def test_concurrent_writers_and_reader_see_every_event_once_in_order(repo: JobRepo):
    """Two metric writers, a log writer and the API's status changes write concurrently while a
    reader follows with events(after): it sees 1..last exactly once, in order."""
    job_id = submit_spec(repo)
    attempt = repo.claim_job(job_id, "w")
    stop = threading.Event()
    seen: list[int] = []

    def metrics_writer(name: str) -> None:
        for i in range(25):
            repo.append_metrics(job_id, [{"step": i, "name": name, "value": float(i)} for _ in range(8)])

    def log_writer() -> None:
        for i in range(25):
            repo.append_logs(job_id, [f"line {i}", f"line {i}b"])

    def reader() -> None:
        after = 0
        while True:
            done = stop.is_set()  # read before the batch: all writes happened before this read
            batch = repo.events(job_id, after, limit=37)
            for e in batch.events:
                seen.append(e.seq)
                after = e.seq
            if done and not batch.events and after >= batch.last_seq:
                return

    r = threading.Thread(target=reader)
    r.start()
    writers = [threading.Thread(target=metrics_writer, args=(n,)) for n in ("loss", "lr")]
    writers.append(threading.Thread(target=log_writer))
    for w in writers:
        w.start()
    repo.cancel(job_id)  # a status change from "the API" in the middle
    for w in writers:
        w.join()
    repo.finish_job(job_id, attempt, "cancelled")
    stop.set()
    r.join(60)
    last = repo.events(job_id).last_seq
    assert last == 2 + 2 * 25 * 8 + 25 * 2 + 2
    assert seen == list(range(1, last + 1))


def test_idempotent_submit_under_concurrency_creates_one_job(repo: JobRepo):
    spec = {"kind": "pretrain", "name": "idem", "priority": 5, "max_restarts": 0}
    barrier = threading.Barrier(12)

    def submit(_: int):
        barrier.wait()
        return repo.submit(
            spec, queue="sgmim", idempotency_key_hash="k" * 64, body_hash="b" * 64
        )

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(submit, range(12)))
    assert len({r.job.id for r in results}) == 1
    assert sum(r.created for r in results) == 1
    assert len(repo.list()) == 1
    with pytest.raises(IdempotencyConflict):
        repo.submit(spec, queue="sgmim", idempotency_key_hash="k" * 64, body_hash="c" * 64)


def test_record_checkpoint_validates_and_updates(repo: JobRepo):
    job_id = submit_spec(repo)
    for bad in ("/etc/passwd", "../x", "checkpoints/../../x", ""):
        with pytest.raises(ValueError):
            repo.record_checkpoint(job_id, "c", "deepspeed", 1, 10, bad)
    for bad_name in ("..", "a/b", "", "x\r\nSet-Cookie: a", 'na"me'):
        with pytest.raises(ValueError):
            repo.record_checkpoint(job_id, bad_name, "deepspeed", 1, 10, "checkpoints/x")
    with pytest.raises(ValueError):
        repo.record_checkpoint(job_id, "c", "pickle", 1, 10, "checkpoints/x")
    repo.record_checkpoint(job_id, "global_step1", "deepspeed", 1, 10, "checkpoints/global_step1")
    repo.record_checkpoint(job_id, "global_step1", "deepspeed", 1, 20, "checkpoints/global_step1")
    repo.record_checkpoint(job_id, "encoder", "encoder", 2, 30, "export/encoder.safetensors")
    rows = repo.checkpoints(job_id)
    assert [(c.name, c.size_bytes) for c in rows] == [("global_step1", 20), ("encoder", 30)]
    repo.delete_checkpoint(job_id, "global_step1")
    assert [c.name for c in repo.checkpoints(job_id)] == ["encoder"]
    repo.set_evaluation(job_id, {"task": "depth", "metrics": {"rmse": 0.3}})
    assert repo.evaluation(job_id)["metrics"]["rmse"] == 0.3


def test_reading_100k_metric_points_is_paginated(repo: JobRepo):
    job_id = submit_spec(repo)
    n = 100_000
    for start in range(0, n, 10_000):
        repo.append_metrics(
            job_id,
            [
                {"step": i, "name": "loss", "value": math.sin(i), "time": float(i)}
                for i in range(start, start + 10_000)
            ],
        )
    after, total, pages = 1, 0, 0  # seq 1 is the queued status event
    while True:
        page = repo.metrics(job_id, names=["loss"], after=after, limit=10_000)
        if not page:
            break
        assert len(page) <= 10_000
        assert page[0].seq == after + 1
        total += len(page)
        pages += 1
        after = page[-1].seq
    assert total == n and pages == 10


def test_api_tokens_are_stored_hashed_and_revocable(repo: JobRepo):
    from service.db.base import sha256_hex

    assert repo.has_active_tokens() is False
    token = repo.create_api_token("ci")
    assert repo.has_active_tokens() is True
    assert repo.token_hash_active(sha256_hex(token)) is True
    assert repo.token_hash_active(token) is False  # the token itself is not stored
    assert repo.revoke_api_token("ci") is True
    assert repo.token_hash_active(sha256_hex(token)) is False


def test_log_lines_and_metric_names_postgres_cannot_store_are_handled(repo: JobRepo):
    job_id = submit_spec(repo)
    repo.append_logs(job_id, ["nul\x00byte", "lone \udc80 surrogate"])
    lines = [r.line for r in repo.logs_tail(job_id)]
    assert lines[0] == "nul\ufffdbyte" and "surrogate" in lines[1] and "\udc80" not in lines[1]
    with pytest.raises(ValueError):
        repo.append_metrics(job_id, [{"name": "lo\x00ss", "value": 1.0}])


def test_tags_search_since_archive_and_progress_reset(repo: JobRepo):
    import datetime as dt

    a = submit_spec(repo, name="Swin-Base-baseline", tags=["baseline", "swin_b"], note="first")
    b = submit_spec(repo, name="vit-ablation", tags=["ablation"])
    c = submit_spec(repo, name="base%_literal")  # LIKE wildcards in names and searches are literal
    ids = lambda **kw: [j.id for j in repo.list(**kw)]  # noqa: E731
    assert ids(tags=["baseline"]) == [a] and ids(tags=["swin"]) == []  # whole tags only
    assert ids(tags=["baseline", "ablation"]) == []
    assert set(ids(search="BASE")) == {a, c} and ids(search="%_") == [c]
    assert ids(since=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []
    repo.update_job(a, add_tags=["ablation"], remove_tags=["swin_b"], note="")
    job = repo.get(a)
    assert job.tags == ",baseline,ablation," and job.note is None
    repo.update_job(b, archived=True)
    assert b not in ids() and ids(archived=True) == [b]
    attempt = repo.claim_job(a, "w")
    repo.heartbeat(a, attempt, {"step": 5, "total_steps": 10, "epoch": 0.5})
    repo.append_metrics(a, [{"step": 5, "epoch": 0.5, "name": "loss", "value": 1.0, "time": 1.0}])
    repo.cancel(a)
    repo.finish_job(a, attempt, "cancelled")
    assert [j.id for j in repo.due_notifications()] == [a]
    resumed = repo.resume(a)
    assert (resumed.step, resumed.total_steps, resumed.epoch, resumed.last_metrics) == (None,) * 4


def test_forget_job_unlinks_children_and_refuses_active_jobs(repo: JobRepo):
    parent = submit_spec(repo)
    with pytest.raises(InvalidTransition, match="is still queued"):
        repo.forget_job(parent)
    attempt = repo.claim_job(parent, "w")
    repo.record_checkpoint(parent, "global_step1", "deepspeed", 1, 10, "checkpoints/global_step1")
    repo.append_logs(parent, ["a line"])
    repo.finish_job(parent, attempt, "succeeded")
    child = submit_spec(repo, kind="finetune", parent={"job_id": parent})
    assert repo.child_ids(parent) == [child]
    assert [c.id for c in repo.children(parent)] == [child]
    repo.forget_job(parent)
    with pytest.raises(JobNotFound):
        repo.get(parent)
    assert repo.get(child).parent_id is None


def test_the_composed_parts_define_each_method_once():
    """JobRepo composes its concerns by inheritance: a method defined in two parts would
    silently shadow the other (a merge once gave `children` two meanings)."""
    parts = [base for base in JobRepo.__mro__[1:] if base.__module__.startswith("service.db.")
             and base.__name__ != "RepoBase"]
    owners: dict[str, str] = {}
    for cls in [JobRepo, *parts]:
        for name in vars(cls):
            if name.startswith("__"):
                continue
            assert name not in owners, f"{name} is defined in {owners[name]} and {cls.__name__}"
            owners[name] = cls.__name__
