"""Group commit of submits (service/batcher.py, issue 14 finding 10): the submits waiting
together are stored in one transaction, each request gets its own job, and a batch that fails
is stored one submit at a time, so that one bad row fails only its own request."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from service.batcher import SubmitBatcher
from service.db.repo import JobRepo

SPEC = {"kind": "pretrain", "name": "b", "priority": 5, "max_restarts": 2}


def test_waiting_submits_share_one_transaction(repo: JobRepo, monkeypatch):
    calls: list[int] = []
    submit_many = repo.submit_many

    def counted(specs):
        calls.append(len(specs))
        return submit_many(specs)

    monkeypatch.setattr(repo, "submit_many", counted)
    batcher = SubmitBatcher(repo)
    # all waiting before the writer thread starts
    futures = [batcher.submit({**SPEC, "name": f"b{i}"}, "sgmim") for i in range(30)]
    batcher.start()
    jobs = [f.result(30) for f in futures]
    batcher.stop()
    assert calls == [30]
    assert [job.name for job in jobs] == [f"b{i}" for i in range(30)]
    for job in jobs:
        stored = repo.get(job.id)
        assert (stored.status, stored.queue, repo.events(job.id).last_seq) == ("queued", "sgmim", 1)


def test_a_bad_row_fails_only_its_own_submit(repo: JobRepo):
    batcher = SubmitBatcher(repo)
    orphan = {**SPEC, "name": "orphan", "parent": {"job_id": "0000000000000000", "checkpoint": "encoder"}}
    futures = [batcher.submit({**SPEC, "name": "first"}, "sgmim"), batcher.submit(orphan, "sgmim"),
               batcher.submit({**SPEC, "name": "last"}, "sgmim")]
    batcher.start()
    first, last = futures[0].result(30), futures[2].result(30)
    with pytest.raises(IntegrityError):  # its parent does not exist (the route checks it first)
        futures[1].result(30)
    batcher.stop()
    assert {repo.get(first.id).name, repo.get(last.id).name} == {"first", "last"}
    assert [j.name for j in repo.list(limit=10)] == ["last", "first"]


def test_stop_stores_what_is_pending(repo: JobRepo):
    batcher = SubmitBatcher(repo)
    batcher.start()
    futures = [batcher.submit({**SPEC, "name": f"s{i}"}, "sgmim") for i in range(5)]
    batcher.stop()
    assert all(f.done() for f in futures)
    assert sorted(repo.get(f.result().id).name for f in futures) == [f"s{i}" for i in range(5)]
