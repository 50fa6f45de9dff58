"""/api/v1/jobs/{id}/series (downsampled curves) and the list's name filter, on both databases."""

from __future__ import annotations

import math

from tests.service.conftest import PRETRAIN, Api

JOBS = "/api/v1/jobs"


def add_points(api: Api, job_id: str, n: int) -> None:
    batch = []
    for step in range(1, n + 1):
        batch.append({"name": "loss", "value": 1.0 / step, "step": step})
        if step % 10 == 0:
            batch.append({"name": "lr", "value": float(step), "step": step})
    api.repo.append_metrics(job_id, batch)


def test_a_100k_point_curve_is_averaged_into_buckets(api: Api):
    job = api.submit()
    add_points(api, job["id"], 100_000)
    r = api.client.get(f"{JOBS}/{job['id']}/series", params={"names": "loss,lr", "points": 1000})
    assert r.status_code == 200
    assert len(r.content) < 200_000  # 2 curves × 1000 buckets; the 110,000 points are megabytes
    body = r.json()
    loss, lr = body["curves"]["loss"], body["curves"]["lr"]
    assert loss["points"] == 100_000 and loss["downsampled"]
    assert len(loss["steps"]) == len(loss["values"]) == len(loss["low"]) == len(loss["high"]) == 1000
    # bucket i holds steps 100 i + 1 .. 100 (i + 1): its first step, mean, min and max of 1/step
    assert loss["steps"][:2] == [1, 101] and loss["steps"][-1] == 99_901
    expected = sum(1.0 / s for s in range(101, 201)) / 100
    assert math.isclose(loss["values"][1], expected, rel_tol=1e-9)
    assert loss["low"][1] == 1.0 / 200 and loss["high"][1] == 1.0 / 101
    # 10,000 lr points at steps 10, 20, ...: buckets of 100 steps from step 10 hold 10 points
    assert lr["points"] == 10_000 and len(lr["steps"]) == 1000
    assert lr["steps"][0] == 10 and lr["values"][0] == 55.0 and lr["high"][0] == 100.0
    assert body["last_seq"] == 1 + 110_000  # the submit's status event, then every point


def test_a_short_curve_comes_whole_and_last_seq_bounds_it(api: Api):
    job = api.submit()
    api.repo.append_metrics(
        job["id"],
        [
            {"name": "loss", "value": 2.0, "step": 1},
            {"name": "loss", "value": 1.5, "step": 2},
            {"name": "loss", "value": float("nan"), "step": 3},
            {"name": "loss", "value": 1.2, "step": 2},  # a resumed attempt re-runs step 2
            {"name": "epoch_time", "value": 3.0, "step": None},
        ],
    )
    body = api.client.get(f"{JOBS}/{job['id']}/series").json()
    assert body["curves"] == {
        "loss": {
            "steps": [1, 2, 3],
            "values": [2.0, 1.2, None],
            "low": None,
            "high": None,
            "points": 4,
            "downsampled": False,
        }
    }
    api.succeed(job["id"])  # (the stream then ends)
    events = api.client.get(f"{JOBS}/{job['id']}/events", params={"after": body["last_seq"]})
    assert "event: metric" not in events.text  # nothing left to replay after last_seq


def test_series_errors(api: Api):
    assert api.client.get(f"{JOBS}/0000000000000000/series").status_code == 404
    job = api.submit()
    assert api.client.get(f"{JOBS}/{job['id']}/series", params={"points": 5}).status_code == 422
    assert api.client.get(f"{JOBS}/{job['id']}/series").json()["curves"] == {}


def test_list_name_filter(api: Api):
    for name in ("sgmim-swin", "SimMIM-swin", "50%_done", "other"):
        api.submit({**PRETRAIN, "name": name})
    names = {j.name for j in api.repo.list(search="MIM")}
    assert names == {"sgmim-swin", "SimMIM-swin"}
    assert {j.name for j in api.repo.list(search="%_")} == {"50%_done"}  # no wildcards
    page = api.client.get("/", params={"q": "swin", "status": "queued"})
    assert page.status_code == 200 and "sgmim-swin" in page.text and "other" not in page.text
