"""Metric points after a resume (issue 14, finding 7): each point records its attempt, and the
latest attempt's point of a step is served by default, on both databases."""

from __future__ import annotations

from service.db.repo import JobRepo
from tests.service.conftest import Api, submit_spec


def points(steps, name: str = "loss") -> list[dict]:
    return [{"name": name, "value": float(step), "step": step} for step in steps]


def resumed_job(repo: JobRepo) -> str:
    """Attempt 1 writes steps 1-5 and is lost after its checkpoint at step 3; attempt 2 resumes
    and writes steps 4-6 again."""
    job_id = submit_spec(repo)
    assert repo.claim_job(job_id, "w") == 1
    repo.append_metrics(job_id, points(range(1, 6)))
    assert repo.requeue(job_id, "worker lost (test)") == "queued"
    assert repo.claim_job(job_id, "w") == 2
    repo.append_metrics(job_id, points(range(4, 7)) + [{"name": "lr", "value": 0.1, "step": None}])
    return job_id


def test_points_record_their_attempt_and_the_latest_wins(repo: JobRepo):
    job_id = resumed_job(repo)
    latest = [(p.step, p.attempt) for p in repo.metrics(job_id, names=["loss"])]
    assert latest == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert len(repo.metrics(job_id, names=["loss"], attempt="all")) == 8
    assert [p.step for p in repo.metrics(job_id, attempt=1)] == [1, 2, 3, 4, 5]
    assert [(p.name, p.step) for p in repo.metrics(job_id, attempt=2)][-1] == ("lr", None)
    events = [e for e in repo.events(job_id).events if e.type == "metric"]
    assert len(events) == 9 and {e.data["attempt"] for e in events} == {1, 2}, "SSE keeps the history"


def test_the_api_serves_the_latest_attempt_by_default(api: Api):
    job_id = resumed_job(api.repo)
    url = f"/api/v1/jobs/{job_id}/metrics"
    items = api.client.get(url, params={"names": "loss"}).json()["items"]
    assert [(p["step"], p["attempt"]) for p in items] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert len(api.client.get(url, params={"names": "loss", "attempt": "all"}).json()["items"]) == 8
    assert len(api.client.get(url, params={"attempt": "1"}).json()["items"]) == 5
    assert api.client.get(url, params={"attempt": "first"}).status_code == 422


def test_an_abandoned_timeline_is_left_out_even_where_the_new_attempt_has_not_reached(repo: JobRepo):
    job_id = submit_spec(repo)
    repo.claim_job(job_id, "w")
    repo.append_metrics(job_id, points(range(1, 11)) + [{"name": "note", "value": 1.0, "step": None}])
    repo.requeue(job_id, "worker lost (test)")
    repo.claim_job(job_id, "w")
    repo.append_metrics(job_id, points(range(7, 9)))  # resumed from the checkpoint at step 6
    assert [(p.step, p.attempt) for p in repo.metrics(job_id, names=["loss"])] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (5, 1), (6, 1), (7, 2), (8, 2)]
    assert [p.name for p in repo.metrics(job_id, names=["note"])] == ["note"], "stepless points stay"
