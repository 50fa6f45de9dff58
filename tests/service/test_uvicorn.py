"""End to end against a real uvicorn process (one per database backend)."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import pytest

from tests.service.conftest import PRETRAIN, Server, broker_messages


def wait_until(probe, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := probe()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value

pytestmark = pytest.mark.slow
JOBS = "/api/v1/jobs"


def sse_events(response: httpx.Response):
    """Parse an SSE stream incrementally: yields {id, event, data}."""
    fields: dict = {}
    for line in response.iter_lines():
        if line == "":
            if "data" in fields:
                yield {
                    "id": int(fields["id"]) if "id" in fields else None,
                    "event": fields.get("event"),
                    "data": json.loads(fields["data"]),
                }
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            fields[key] = value.removeprefix(" ")


def test_submit_list_and_live_sse(server: Server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        r = client.post(JOBS, json={**PRETRAIN, "name": "e2e"})
        assert r.status_code == 201
        job_id = r.json()["id"]
        assert job_id in [j["id"] for j in client.get(JOBS, params={"limit": 200}).json()["items"]]
        # the server's dispatcher sends the wake-up message right after the answer
        sent = wait_until(lambda: [m for m in broker_messages(server.settings) if m["args"] == [job_id]])
        assert [m["args"] for m in sent] == [[job_id]]
        received = []
        with client.stream("GET", f"{JOBS}/{job_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = sse_events(stream)
            received.append(next(events))
            assert received[0]["data"]["status"] == "queued"
            # the worker's side happens while the client is connected
            attempt = server.repo.claim_job(job_id, "w")
            server.repo.append_metrics(job_id, [{"step": 1, "name": "loss", "value": 0.5}])
            server.repo.append_logs(job_id, ["hello"])
            server.repo.finish_job(job_id, attempt, "succeeded")
            received.extend(events)
        assert [(e["id"], e["event"]) for e in received] == [
            (1, "status"),
            (2, "status"),
            (3, "metric"),
            (4, "log"),
            (5, "status"),
            (None, "status"),
        ]
        assert received[2]["data"]["value"] == 0.5 and received[3]["data"]["line"] == "hello"
        assert received[-1]["data"]["final"] is True
        assert client.get(f"{JOBS}/{job_id}").json()["status"] == "succeeded"


def test_fifty_concurrent_submits_with_one_key_create_one_job(server: Server):
    key = f"key-{time.time_ns()}"
    body = {**PRETRAIN, "name": key}
    barrier = threading.Barrier(50)

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            barrier.wait()
            return client.post(JOBS, json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(submit, range(50)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(201) == 1 and codes.count(200) == 49, codes
    assert len({r.json()["id"] for r in responses}) == 1
    job_id = responses[0].json()["id"]
    named = [j for j in server.repo.list(limit=1000) if j.name == key]
    assert [j.id for j in named] == [job_id]
    wait_until(lambda: any(m["args"] == [job_id] for m in broker_messages(server.settings)))
    assert sum(m["args"] == [job_id] for m in broker_messages(server.settings)) == 1


def test_sse_resume_after_disconnect_delivers_every_event_exactly_once(server: Server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job_id = client.post(JOBS, json={**PRETRAIN, "name": "resume"}).json()["id"]
    attempt = server.repo.claim_job(job_id, "w")
    done = threading.Event()

    def worker() -> None:  # writes while the client disconnects and reconnects
        for i in range(40):
            server.repo.append_metrics(
                job_id,
                [{"step": i, "name": "loss", "value": 1 / (i + 1)}, {"step": i, "name": "lr", "value": 0.1}],
            )
            server.repo.append_logs(job_id, [f"step {i}"])
            time.sleep(0.01)
        server.repo.finish_job(job_id, attempt, "succeeded")
        done.set()

    writer = threading.Thread(target=worker)
    writer.start()
    ids: list[int] = []
    last_id: int | None = None
    final = None
    connections = 0
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while final is None:
            connections += 1
            headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
            with client.stream("GET", f"{JOBS}/{job_id}/events", headers=headers) as stream:
                for n, event in enumerate(sse_events(stream)):
                    if event["id"] is None:
                        final = event
                        break
                    ids.append(event["id"])
                    last_id = event["id"]
                    if n == 17 and connections < 6:
                        break  # drop the connection mid-stream
    writer.join()
    last_seq = server.repo.events(job_id).last_seq
    assert connections >= 3
    assert ids == list(range(1, last_seq + 1))  # every event, once, in order
    assert final["data"] == {"status": "succeeded", "final": True, "last_seq": last_seq}


def test_raw_traversal_requests_are_404(server: Server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        job_id = client.post(JOBS, json={**PRETRAIN, "name": "trav"}).json()["id"]
    run = server.settings.run_dir(job_id)
    (run / "export").mkdir(parents=True)
    (run / "export" / "encoder.safetensors").write_bytes(b"weights")
    (run / "spec.json").write_text("private")
    server.repo.record_checkpoint(job_id, "encoder", "encoder", 1, 7, "export/encoder.safetensors")
    parsed = urlparse(server.url)
    base = f"{JOBS}/{job_id}/checkpoints/"
    for name in (
        "encoder",
        "../../../../../../etc/passwd",
        "..%2f..%2f..%2fetc%2fpasswd",
        "%2e%2e/spec.json",
        "..",
        "/etc/passwd",
        "%2e%2e%2fspec.json",
    ):
        with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
            request = f"GET {base}{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            sock.sendall(request.encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        status = int(data.split(b" ", 2)[1])
        if name == "encoder":
            assert status == 200 and data.endswith(b"weights")
        else:
            assert status == 404, (name, data[:200])
            assert b"root:" not in data and b"private" not in data
