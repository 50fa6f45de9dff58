"""Auth, body size limit, the loopback rule (SQLite; the rules do not depend on the database)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from fastapi.testclient import TestClient

from service.auth import is_loopback
from service.cli_entry import ServerConfigError, prepare, run_server
from service.main import create_app
from tests.service.conftest import PRETRAIN, make_settings

JOBS = "/api/v1/jobs"
ROUTES = [
    ("GET", JOBS),
    ("POST", JOBS),
    ("GET", f"{JOBS}/0000000000000000"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/nonexistent"),
    ("GET", f"{JOBS}/0000000000000000/events"),
    ("POST", f"{JOBS}/0000000000000000/cancel"),
]


@pytest.fixture
def secured(tmp_path) -> Iterator[TestClient]:
    token_file = tmp_path / "tokens"
    token_file.write_text("# ops\nfile-token\n\n")
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", api_tokens="s3cret,other", token_file=token_file
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def test_every_route_but_healthz_needs_a_token(secured: TestClient):
    assert secured.get("/healthz").status_code == 200
    for method, path in ROUTES:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic s3cret"},
            {"Authorization": "Bearer "},
            {"Authorization": "s3cret"},
        ):
            r = secured.request(method, path, headers=headers, json=PRETRAIN if method == "POST" else None)
            assert r.status_code == 401, (method, path, headers)
            assert r.headers["content-type"] == "application/json" and r.json()["detail"]
            assert r.headers["www-authenticate"].startswith("Bearer")


def test_configured_tokens_are_accepted(secured: TestClient):
    for token in ("s3cret", "other", "file-token"):
        r = secured.get(JOBS, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, token
    r = secured.post(JOBS, json=PRETRAIN, headers={"Authorization": "bearer s3cret"})
    assert r.status_code == 201
    assert secured.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_database_tokens_work_and_revocation_is_immediate(tmp_path):
    from service.db import migrate
    from service.db.repo import JobRepo
    from service.db.session import Database

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    db = Database(url)
    migrate.upgrade(db.engine)
    token = JobRepo(db).create_api_token("laptop")
    with TestClient(create_app(make_settings(tmp_path, url)), raise_server_exceptions=False) as client:
        assert client.get(JOBS).status_code == 401  # a token in the DB at start turns auth on
        assert client.get(JOBS, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        JobRepo(db).revoke_api_token("laptop")
        client.app.state.auth._cache.clear()
        assert client.get(JOBS, headers={"Authorization": f"Bearer {token}"}).status_code == 401
    db.dispose()


def test_body_size_limit_is_413_json(tmp_path):
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", max_body_bytes=4096)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        big = {**PRETRAIN, "name": "n", "config": {"schedule": {"epochs": 1}, "data": {"root": "x" * 5000}}}
        r = client.post(JOBS, json=big)
        assert r.status_code == 413 and "larger than 4096" in r.json()["detail"]

        def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 1000

        r = client.post(JOBS, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["detail"]
        assert client.get(JOBS).json()["items"] == []
        assert client.post(JOBS, json=PRETRAIN).status_code == 201


def test_no_token_means_loopback_only(tmp_path):
    """Without a token, a request that arrives on a non-loopback address is refused."""
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    with TestClient(app):
        for server, expected in ((("10.1.2.3", 8000), 403), (("127.0.0.1", 8000), 200), (("::1", 8000), 200)):
            sent: list[dict] = []

            async def call(server=server, sent=sent) -> None:
                async def receive():
                    return {"type": "http.request", "body": b""}

                async def send(message):
                    sent.append(message)

                await app(
                    {
                        "type": "http",
                        "asgi": {"version": "3.0"},
                        "http_version": "1.1",
                        "method": "GET",
                        "scheme": "http",
                        "path": JOBS,
                        "raw_path": JOBS.encode(),
                        "root_path": "",
                        "query_string": b"",
                        "headers": [],
                        "client": ("1.2.3.4", 5),
                        "server": server,
                    },
                    receive,
                    send,
                )

            anyio.run(call)
            assert sent[0]["status"] == expected, server


def test_server_refuses_non_loopback_without_token(tmp_path):
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    for host in ("0.0.0.0", "192.168.1.10", "::", "example.org"):
        with pytest.raises(ServerConfigError) as exc:
            run_server(host, 0, settings=settings)
        assert "SGMIM_API_TOKENS" in exc.value.message and host in exc.value.message
    prepare(settings, "127.0.0.1")  # loopback: fine without a token
    prepare(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", api_tokens="t"), "0.0.0.0")
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_app_can_start_twice(tmp_path):
    app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}"))
    for _ in range(2):
        with TestClient(app) as client:
            assert client.post(JOBS, json=PRETRAIN).status_code == 201
            assert 'sgmim_jobs{status="queued"}' in client.get("/metrics").text
