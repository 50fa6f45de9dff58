"""REST API v1 through the ASGI app (FastAPI TestClient on httpx), on SQLite and Postgres."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import tarfile

import pytest

from service.openapi import SPEC_EXAMPLES
from sgmim.spec import parse_spec
from tests.service.conftest import PRETRAIN, Api

JOBS = "/api/v1/jobs"


# Submit ----------------------------------------------------------------------------------------


def test_submit_stores_queued_job_and_sends_only_its_id(api: Api):
    r = api.client.post(JOBS, json={**PRETRAIN, "priority": 7, "resources": {"gpu_type": "a100"}})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["kind"] == "pretrain" and job["attempt"] == 0
    assert r.headers["location"] == f"{JOBS}/{job['id']}"
    assert job["spec"]["config"]["schedule"]["epochs"] == 1  # stored validated, defaults filled
    assert job["queue"] == "sgmim.a100" and job["priority"] == 7
    assert api.messages() == [
        {"queue": "sgmim.a100", "args": [job["id"]], "kwargs": {}, "task": "sgmim.run_job", "priority": 7}
    ]
    assert api.client.get(f"{JOBS}/{job['id']}").json()["spec"] == job["spec"]
    assert api.repo.find_unclaimed_queued(3600) == []  # marked as sent


@pytest.mark.parametrize(
    "body, loc",
    [
        (
            {**PRETRAIN, "config": {"optim": {"base_lr": -1}, "schedule": {"epochs": 1}}},
            ["body", "config", "optim", "base_lr"],
        ),
        ({**PRETRAIN, "config": {"schedule": {"epochs": 1}, "bogus": 1}}, ["body", "config", "bogus"]),
        ({**PRETRAIN, "kind": "train"}, ["body", "kind"]),
        ({"kind": "finetune", "name": "f", "config": {"init": "parent"}}, ["body", "parent"]),
        ({**PRETRAIN, "name": "x" * 5000}, ["body", "name"]),
        (
            {**PRETRAIN, "config": {"schedule": {"epochs": 1}, "data": {"root": "a\x00b"}}},
            ["body", "config", "data", "root"],
        ),
    ],
)
def test_invalid_spec_is_422_naming_the_field(api: Api, body, loc):
    r = api.client.post(JOBS, json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]], r.json()
    assert api.messages() == [] and api.repo.list() == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[1, 2]",
        b'{"kind": NaN}',
        b"[" * 5000 + b"]" * 5000,
        b'{"kind": "pretrain", "name": "t", "config": {"optim": {"eps": 1e999}}}',
    ],
)
def test_malformed_body_is_422_json(api: Api, raw):
    r = api.client.post(JOBS, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_a_body_that_is_not_utf8_is_422_json_on_every_body_route(api: Api):
    """FastAPI answers a body it cannot decode with a 400 the schema does not state (schemathesis
    found it on PATCH); every body route answers it as the malformed JSON it is."""
    job = api.submit()
    for method, path in (("POST", JOBS), ("PATCH", f"{JOBS}/{job['id']}")):
        r = api.client.request(method, path, content=b'{"note": "\xff\xfe"}',
                               headers={"content-type": "application/json"})
        assert r.status_code == 422, (method, r.text)
        assert r.json()["detail"][0]["loc"] == ["body"] and "utf-8" in r.json()["detail"][0]["msg"].lower()


def test_parent_must_exist_have_succeeded_and_be_the_right_kind(api: Api):
    def finetune(parent: str, checkpoint: str | None = None):
        ref = {"job_id": parent} if checkpoint is None else {"job_id": parent, "checkpoint": checkpoint}
        return api.client.post(JOBS, json={"kind": "finetune", "name": "f", "parent": ref})

    r = finetune("0000000000000000")
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "parent", "job_id"]
    assert "does not exist" in r.json()["detail"][0]["msg"]
    pre = api.submit()["id"]
    r = finetune(pre)
    assert r.status_code == 409 and "must have succeeded" in r.json()["detail"][0]["msg"]
    api.succeed(pre)
    r = finetune(pre, "global_step9")
    assert r.status_code == 409 and r.json()["detail"][0]["loc"] == ["body", "parent", "checkpoint"]
    api.repo.record_checkpoint(pre, "encoder", "encoder", 9, 1, "export/encoder.safetensors")
    assert finetune(pre, "encoder").status_code == 201
    child = finetune(pre)
    assert child.status_code == 201 and child.json()["parent_id"] == pre
    r = api.client.post(JOBS, json={"kind": "evaluate", "name": "e", "parent": {"job_id": pre}})
    assert r.status_code == 409 and "must be a finetune job" in r.json()["detail"][0]["msg"]


def test_idempotency_key_same_body_same_job_other_body_409(api: Api):
    headers = {"Idempotency-Key": "abc-123"}
    first = api.client.post(JOBS, json=PRETRAIN, headers=headers)
    assert first.status_code == 201
    reordered = json.loads(json.dumps(PRETRAIN))
    again = api.client.post(
        JOBS,
        content=json.dumps(dict(reversed(list(reordered.items())))),
        headers={**headers, "content-type": "application/json"},
    )
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = api.client.post(JOBS, json={**PRETRAIN, "name": "other"}, headers=headers)
    assert other.status_code == 409 and other.json()["job_id"] == first.json()["id"]
    assert len(api.repo.list()) == 1 and len(api.messages()) == 1
    assert api.client.post(JOBS, json=PRETRAIN, headers={"Idempotency-Key": "k2"}).status_code == 201


def test_openapi_shows_the_job_spec_schema_with_valid_examples(api: Api):
    schema = api.client.get("/openapi.json").json()
    body = schema["paths"][JOBS]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    job_spec = schema["components"]["schemas"]["JobSpec"]
    assert job_spec["discriminator"]["propertyName"] == "kind"
    assert set(job_spec["discriminator"]["mapping"]) == {"pretrain", "finetune", "evaluate"}
    assert "OptimConfig" in schema["components"]["schemas"]
    assert set(body["examples"]) == {"pretrain", "finetune", "evaluate"}
    for example in SPEC_EXAMPLES.values():
        parse_spec(copy.deepcopy(example["value"]))
    assert "#/$defs/" not in json.dumps(schema)
    assert api.client.get("/docs").status_code == 200


# List, show ------------------------------------------------------------------------------------


def test_list_newest_first_filters_and_cursor(api: Api):
    ids = [api.submit({**PRETRAIN, "name": f"j{i}"})["id"] for i in range(7)]
    api.succeed(ids[1])
    api.repo.cancel(ids[2])
    r = api.client.get(JOBS, params={"limit": 3})
    page = r.json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:3]
    assert "spec" not in page["items"][0]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        page = api.client.get(JOBS, params={"limit": 3, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]
    assert [j["id"] for j in api.client.get(JOBS, params={"status": "succeeded"}).json()["items"]] == [ids[1]]
    both = api.client.get(JOBS, params=[("status", "succeeded"), ("status", "cancelled")]).json()["items"]
    assert {j["id"] for j in both} == {ids[1], ids[2]}
    assert api.client.get(JOBS, params={"kind": "finetune"}).json()["items"] == []
    assert len(api.client.get(JOBS, params={"kind": "pretrain"}).json()["items"]) == 7
    for bad in ({"limit": 0}, {"limit": 201}, {"status": "nope"}, {"cursor": "garbage!"}):
        r = api.client.get(JOBS, params=bad)
        assert r.status_code == 422, bad
        assert r.json()["detail"][0]["loc"][0] == "query"


def test_organising_filters_and_patch_refuse_what_the_database_cannot_hold(api: Api):
    job = api.submit({**PRETRAIN, "tags": ["a"], "note": "n"})
    for bad in ({"tag": "\x00a"}, {"q": "a\x00"}, {"since": "0001-01-01T00:00:00+19:48"}, {"since": "x"}):
        r = api.client.get(JOBS, params=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"][0] == "query"
    for bad in ({"note": "a\x00"}, {"add_tags": ["has space"]}, {"remove_tags": ["\x00"]}, {"tags": ["a"]}):
        r = api.client.patch(f"{JOBS}/{job['id']}", json=bad)
        assert r.status_code == 422, (bad, r.text)
    r = api.client.patch(f"{JOBS}/{job['id']}", json={"add_tags": ["b"], "note": "m", "archived": True})
    assert r.status_code == 200 and r.json()["tags"] == ["a", "b"] and r.json()["note"] == "m"
    archived = api.client.get(JOBS, params={"archived": True, "tag": ["a", "b"]}).json()["items"]
    assert [j["id"] for j in archived] == [job["id"]]


def test_unknown_or_malformed_job_id_is_404_json(api: Api):
    for path in ("0000000000000000", "NOT-AN-ID", "%00", "x" * 40):
        r = api.client.get(f"{JOBS}/{path}")
        assert r.status_code == 404 and "detail" in r.json()
        assert api.client.post(f"{JOBS}/{path}/cancel").status_code == 404
        assert api.client.get(f"{JOBS}/{path}/events").status_code == 404


# Cancel, resume --------------------------------------------------------------------------------


def test_cancel_follows_the_state_machine(api: Api):
    queued = api.submit()["id"]
    r = api.client.post(f"{JOBS}/{queued}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert api.repo.claim_job(queued, "w") is None  # never starts
    assert api.client.post(f"{JOBS}/{queued}/cancel").status_code == 202  # repeat: harmless

    running = api.submit()["id"]
    attempt = api.repo.claim_job(running, "w")
    r = api.client.post(f"{JOBS}/{running}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    assert r.json()["cancel_requested_at"] is not None
    assert api.client.post(f"{JOBS}/{running}/cancel").json()["status"] == "cancelling"
    events_before = api.repo.events(running).last_seq
    api.client.post(f"{JOBS}/{running}/cancel")
    assert api.repo.events(running).last_seq == events_before  # a repeat adds no event
    api.repo.finish_job(running, attempt, "cancelled")

    done = api.submit()["id"]
    api.succeed(done)
    r = api.client.post(f"{JOBS}/{done}/cancel")
    assert r.status_code == 409 and r.json()["status"] == "succeeded" and "detail" in r.json()

    failed = api.submit()["id"]
    a = api.repo.claim_job(failed, "w")
    api.repo.finish_job(failed, a, "failed", "exit code 1")
    r = api.client.post(f"{JOBS}/{failed}/cancel")
    assert r.status_code == 409 and r.json()["status"] == "failed"


def test_resume_requeues_failed_and_cancelled_only(api: Api):
    job_id = api.submit()["id"]
    r = api.client.post(f"{JOBS}/{job_id}/resume")
    assert r.status_code == 409 and r.json()["status"] == "queued"
    attempt = api.repo.claim_job(job_id, "w")
    assert api.client.post(f"{JOBS}/{job_id}/resume").json()["status"] == "running"
    api.repo.finish_job(job_id, attempt, "failed", "boom")
    before = len(api.messages())
    r = api.client.post(f"{JOBS}/{job_id}/resume")
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "queued" and body["error"] is None and body["finished_at"] is None
    assert len(api.messages()) == before + 1 and api.messages()[-1]["args"] == [job_id]
    assert api.repo.claim_job(job_id, "w") == 2
    api.repo.finish_job(job_id, 2, "succeeded")
    r = api.client.post(f"{JOBS}/{job_id}/resume")
    assert r.status_code == 409 and r.json()["status"] == "succeeded"


# Metrics, logs, events ---------------------------------------------------------------------------


def _run_with_data(api: Api) -> str:
    job_id = api.submit()["id"]
    attempt = api.repo.claim_job(job_id, "w")
    api.repo.append_metrics(
        job_id,
        [
            {"step": s, "epoch": s / 10, "name": n, "value": v, "time": 1.0 + s}
            for s in range(5)
            for n, v in (("loss", 1.0 / (s + 1)), ("lr", 1e-3))
        ],
    )
    api.repo.append_logs(job_id, [f"line {i}" for i in range(30)])
    api.repo.finish_job(job_id, attempt, "succeeded")
    return job_id


def test_metrics_by_name_after_and_limit(api: Api):
    job_id = _run_with_data(api)
    url = f"{JOBS}/{job_id}/metrics"
    everything = api.client.get(url).json()
    assert len(everything["items"]) == 10 and everything["next_after"] is None
    loss = api.client.get(url, params={"names": "loss"}).json()["items"]
    assert [p["step"] for p in loss] == [0, 1, 2, 3, 4] and {p["name"] for p in loss} == {"loss"}
    page = api.client.get(url, params={"limit": 4}).json()
    assert len(page["items"]) == 4 and page["next_after"] == page["items"][-1]["seq"]
    rest = api.client.get(url, params={"after": page["next_after"]}).json()["items"]
    assert [p["seq"] for p in page["items"] + rest] == [p["seq"] for p in everything["items"]]
    assert api.client.get(url, params={"names": "loss,lr", "after": 10**30}).status_code == 422
    job = api.client.get(f"{JOBS}/{job_id}").json()
    assert job["last_metrics"] == {"loss": 0.2, "lr": 1e-3} and job["progress"]["step"] == 4


def test_logs_tail(api: Api):
    job_id = _run_with_data(api)
    lines = api.client.get(f"{JOBS}/{job_id}/logs", params={"tail": 3}).json()["lines"]
    assert [line["line"] for line in lines] == ["line 27", "line 28", "line 29"]
    assert len(api.client.get(f"{JOBS}/{job_id}/logs").json()["lines"]) == 30
    assert api.client.get(f"{JOBS}/{job_id}/logs", params={"tail": 10_001}).status_code == 422


def parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        fields: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "data" in fields:
            events.append(
                {
                    "id": int(fields["id"]) if "id" in fields else None,
                    "event": fields.get("event"),
                    "data": json.loads(fields["data"]),
                }
            )
    return events


def test_sse_of_ended_job_gives_history_then_final_status(api: Api):
    job_id = _run_with_data(api)
    r = api.client.get(f"{JOBS}/{job_id}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    ids = [e["id"] for e in events if e["id"] is not None]
    assert ids == list(range(1, 10 + 30 + 4))
    assert [e["data"]["status"] for e in events if e["event"] == "status" and e["id"]] == [
        "queued",
        "running",
        "succeeded",
    ]
    final = events[-1]
    assert final["id"] is None and final["event"] == "status"
    assert final["data"] == {"status": "succeeded", "final": True, "last_seq": 43}
    resumed = parse_sse(api.client.get(f"{JOBS}/{job_id}/events", headers={"Last-Event-ID": "40"}).text)
    assert [e["id"] for e in resumed] == [41, 42, 43, None]
    by_query = parse_sse(api.client.get(f"{JOBS}/{job_id}/events", params={"after": 43}).text)
    assert [e["id"] for e in by_query] == [None]
    assert api.client.get(f"{JOBS}/{job_id}/events", headers={"Last-Event-ID": "x"}).status_code == 422


# Checkpoints, evaluation, traversal ---------------------------------------------------------------


def _with_artifacts(api: Api) -> tuple[str, bytes]:
    job_id = api.submit()["id"]
    run = api.settings.run_dir(job_id)
    tag = run / "checkpoints" / "global_step10"
    (tag / "sub").mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"model" * 1000)
    (tag / "sub" / "optim.pt").write_bytes(b"o" * 513)
    (run / "export").mkdir()
    payload = bytes(range(256)) * 40
    (run / "export" / "encoder.safetensors").write_bytes(payload)
    api.repo.record_checkpoint(job_id, "global_step10", "deepspeed", 10, 5513, "checkpoints/global_step10")
    api.repo.record_checkpoint(job_id, "encoder", "encoder", 10, len(payload), "export/encoder.safetensors")
    return job_id, payload


def test_checkpoint_list_and_downloads(api: Api):
    job_id, payload = _with_artifacts(api)
    items = api.client.get(f"{JOBS}/{job_id}/checkpoints").json()["items"]
    assert [(c["name"], c["kind"], c["step"]) for c in items] == [
        ("global_step10", "deepspeed", 10),
        ("encoder", "encoder", 10),
    ]
    assert items[1]["size_bytes"] == len(payload) and items[0]["created_at"]

    r = api.client.get(f"{JOBS}/{job_id}/checkpoints/encoder")
    assert r.status_code == 200 and r.content == payload and r.headers["accept-ranges"] == "bytes"
    r = api.client.get(f"{JOBS}/{job_id}/checkpoints/encoder", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == payload[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(payload)}"
    r = api.client.get(f"{JOBS}/{job_id}/checkpoints/encoder", headers={"Range": "bytes=-10"})
    assert r.status_code == 206 and r.content == payload[-10:]
    r = api.client.get(f"{JOBS}/{job_id}/checkpoints/encoder", headers={"Range": f"bytes={len(payload)}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(payload)}" and r.json()

    r = api.client.get(f"{JOBS}/{job_id}/checkpoints/global_step10")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    assert int(r.headers["content-length"]) == len(r.content)
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = sorted(tar.getnames())
        assert names == [
            "global_step10",
            "global_step10/mp_rank_00_model_states.pt",
            "global_step10/sub",
            "global_step10/sub/optim.pt",
        ]
        assert tar.extractfile("global_step10/sub/optim.pt").read() == b"o" * 513


def raw_get(app, raw_path: str) -> tuple[int, bytes]:
    """GET with the path exactly as given (httpx would normalise `..` away), straight to the app."""
    from urllib.parse import unquote

    import anyio

    sent: list[dict] = []

    async def call() -> None:
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": unquote(raw_path),
            "raw_path": raw_path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        await app(scope, receive, send)

    anyio.run(call)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


TRAVERSALS = (
    "..",
    "%2e%2e",
    "..%2f..%2fetc%2fpasswd",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "../../spec.json",
    "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "encoder%00",
    "export%2Fencoder.safetensors",
    "checkpoints",
    "%2e%2e%2f%2e%2e%2fspec.json",
    "....//....//etc/passwd",
)


def test_traversal_and_symlinks_out_of_the_run_dir_are_404(api: Api, tmp_path):
    job_id, _ = _with_artifacts(api)
    run = api.settings.run_dir(job_id)
    (run / "spec.json").write_text('{"spec": "private"}')
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    base = f"{JOBS}/{job_id}/checkpoints/"
    app = api.client.app
    for name in (*TRAVERSALS, str(secret), "%2F" + str(secret).lstrip("/").replace("/", "%2F")):
        status, body = raw_get(app, base + name)
        assert status == 404, name
        assert b"top secret" not in body and b"root:" not in body and b"private" not in body
    # a recorded checkpoint that is a symlink leading out of the run dir
    (run / "export" / "leak.safetensors").symlink_to(secret)
    api.repo.record_checkpoint(job_id, "leak", "encoder", 1, 10, "export/leak.safetensors")
    r = api.client.get(base + "leak")
    assert r.status_code == 404 and b"top secret" not in r.content
    # a symlinked folder and file inside a tag folder are left out of the tar
    tag = run / "checkpoints" / "global_step10"
    (tag / "passwd").symlink_to(secret)
    (tag / "outside").symlink_to(tmp_path)
    r = api.client.get(base + "global_step10")
    assert r.status_code == 200 and b"top secret" not in r.content
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        assert not any(n.endswith(("passwd", "outside", "secret.txt")) for n in tar.getnames())
    # a checkpoint recorded with a path that is itself outside (written behind the repo's back)
    from sqlalchemy import update

    from service.db.models import Checkpoint

    with api.repo.db.write() as s:
        s.execute(update(Checkpoint).where(Checkpoint.name == "encoder").values(path=str(secret)))
    r = api.client.get(base + "encoder")
    assert r.status_code == 404 and b"top secret" not in r.content
    with api.repo.db.write() as s:
        s.execute(update(Checkpoint).where(Checkpoint.name == "encoder").values(path="../../../secret.txt"))
    assert api.client.get(base + "encoder").status_code == 404


def test_evaluation_from_db_or_run_dir_else_404(api: Api):
    job_id = api.submit()["id"]
    r = api.client.get(f"{JOBS}/{job_id}/evaluation")
    assert r.status_code == 404 and "no evaluation" in r.json()["detail"]
    run = api.settings.run_dir(job_id)
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"task": "depth", "metrics": {"rmse": 0.5}}))
    assert api.client.get(f"{JOBS}/{job_id}/evaluation").json()["metrics"]["rmse"] == 0.5
    api.repo.set_evaluation(job_id, {"task": "depth", "metrics": {"rmse": 0.25, "bad": float("nan")}})
    assert api.client.get(f"{JOBS}/{job_id}/evaluation").json()["metrics"] == {"rmse": 0.25, "bad": None}


# Health, metrics, errors ---------------------------------------------------------------------------


def test_health_ready_and_prometheus(api: Api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    a = api.submit()["id"]
    api.submit()
    # both sent before one ends (a job no longer queued is never sent); the dispatcher's thread
    # may be mid-pass, or not have run yet on a loaded machine
    api.client.app.state.dispatcher.drain()
    api.succeed(a)
    text = api.client.get("/metrics").text
    assert 'sgmim_jobs{status="succeeded"} 1.0' in text
    assert 'sgmim_jobs{status="queued"} 1.0' in text
    # the filesystem broker still holds both messages (nobody consumed them)
    assert 'sgmim_queue_depth{queue="sgmim",source="broker"} 2.0' in text
    assert 'sgmim_http_requests_total{method="POST",route="/api/v1/jobs",status="201"}' in text


def test_unexpected_error_is_500_json_without_trace(api: Api, monkeypatch):
    def boom(*_a, **_k):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(api.repo, "get", boom)
    r = api.client.get(f"{JOBS}/0000000000000000")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal server error"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_reaper_requeues_lost_jobs_and_resends_lost_messages(api: Api):
    from service.reaper import reap_once

    lost = api.submit()["id"]
    api.repo.claim_job(lost, "w")
    unsent = api.submit()["id"]
    fresh = api.submit()["id"]
    settings = api.settings.model_copy(update={"stale_heartbeat_s": 0.0, "unclaimed_requeue_s": 3600})
    from sqlalchemy import update

    from service.db.models import Job, utcnow

    api.messages()  # every submit's message is out
    with api.repo.db.write() as s:  # as if its message had been lost two hours ago
        s.execute(update(Job).where(Job.id == unsent).values(enqueued_at=utcnow() - dt.timedelta(hours=2)))
    before = len(api.messages())
    report = reap_once(api.repo, api.client.app.state.broker, settings)
    assert report.requeued == [lost]
    assert set(report.resent) == {lost, unsent} and fresh not in report.resent
    assert api.repo.get(lost).status == "queued" and api.repo.get(lost).restarts == 1
    assert len(api.messages()) == before + 2
    assert reap_once(api.repo, api.client.app.state.broker, settings).resent == []
