"""The no-token loopback mode against a real uvicorn (issue 14, finding 4): a page on another
site cannot submit or cancel jobs through the user's browser (JSON bodies only, foreign Origins
refused on state-changing requests) and a DNS-rebinding name is not served (Host checked);
same-origin requests, as the dashboard at / makes them, keep working."""

from __future__ import annotations

import json

import httpx
from fastapi.testclient import TestClient

from service.main import create_app
from tests.service.conftest import PRETRAIN, Server, make_settings

JOBS = "/api/v1/jobs"


def count_jobs(server: Server) -> int:
    return len(httpx.get(f"{server.url}{JOBS}", params={"limit": 200}).json()["items"])


def test_cross_site_submits_are_refused(server: Server):
    before = count_jobs(server)
    body = json.dumps({**PRETRAIN, "name": "csrf"})
    plain = httpx.post(f"{server.url}{JOBS}", content=body,
                       headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert plain.status_code == 403, plain.text
    no_origin = httpx.post(f"{server.url}{JOBS}", content=body, headers={"Content-Type": "text/plain"})
    assert no_origin.status_code == 415, no_origin.text
    form = httpx.post(f"{server.url}{JOBS}", content=body,
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415
    foreign = httpx.post(f"{server.url}{JOBS}", content=body,
                         headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert foreign.status_code == 403
    assert count_jobs(server) == before, "no job was created"


def test_same_origin_requests_keep_working(server: Server):
    r = httpx.post(f"{server.url}{JOBS}", json={**PRETRAIN, "name": "dashboard"},
                   headers={"Origin": server.url})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    cross = httpx.post(f"{server.url}{JOBS}/{job_id}/cancel", headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    same = httpx.post(f"{server.url}{JOBS}/{job_id}/cancel", headers={"Origin": server.url})
    assert same.status_code in (200, 202) and same.json()["status"] in ("cancelled", "cancelling")
    # a cross-origin GET is harmless (the browser does not let the page read the answer)
    assert httpx.get(f"{server.url}{JOBS}", headers={"Origin": "http://evil.example"}).status_code == 200


def test_foreign_host_names_are_not_served(server: Server):
    port = server.url.rsplit(":", 1)[1]
    evil = httpx.get(f"{server.url}{JOBS}", headers={"Host": f"evil.example:{port}"})
    assert evil.status_code == 400 and "SGMIM_ALLOWED_HOSTS" in evil.json()["detail"]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        assert httpx.get(f"{server.url}{JOBS}", headers={"Host": host}).status_code == 200, host
    assert httpx.get(f"{server.url}/healthz", headers={"Host": "evil.example"}).status_code == 200


def test_configured_host_names_are_served(tmp_path):
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", allowed_hosts="sgmim.lan")
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        assert client.get(JOBS, headers={"Host": "sgmim.lan:8000"}).status_code == 200
        assert client.get(JOBS, headers={"Host": "other.lan:8000"}).status_code == 400
        r = client.post(JOBS, json={**PRETRAIN, "name": "lan"},
                        headers={"Host": "sgmim.lan:8000", "Origin": "http://sgmim.lan:8000"})
        assert r.status_code == 201, r.text
