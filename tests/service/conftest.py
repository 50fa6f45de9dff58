"""Fixtures of the service tests.

The API suite runs once per database backend (`backend` is parametrised over "sqlite" and
"postgres"). Postgres: a fresh database `sgmim_test_<random>` on the `pg_admin_url` server,
dropped at the end of the session. Redis tests use database 11 of the `redis_server`, flushed.
Which servers those are: tests/services.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service.db.models import Base
from service.db.repo import JobRepo
from service.main import create_app
from service.settings import Settings

REDIS_DB = 11
ROOT = Path(__file__).resolve().parents[2]

PRETRAIN = {"kind": "pretrain", "name": "t", "config": {"schedule": {"epochs": 1}}}


def _pg_admin(admin_url: str):
    import psycopg

    return psycopg.connect(admin_url, autocommit=True, connect_timeout=5)


def create_pg_database(admin_url: str) -> str:
    """A fresh database on the server of `admin_url` (the `pg_admin_url` fixture); its URL."""
    name = f"sgmim_test_{secrets.token_hex(6)}"
    with _pg_admin(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_pg_database(admin_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with _pg_admin(admin_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Backend:
    name: str
    url: str


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("sqlite")
        yield Backend("sqlite", f"sqlite:///{folder / 'sgmim.db'}")
        return
    admin_url = request.getfixturevalue("pg_admin_url")
    url = create_pg_database(admin_url)
    try:
        yield Backend("postgres", url)
    finally:
        drop_pg_database(admin_url, url)


def make_settings(data_dir: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir, database_url=database_url, sse_poll_interval_s=0.05, sse_keepalive_s=1.0
    )
    values.update(overrides)
    return Settings(**values)


def reset_database(repo: JobRepo, tries: int = 5) -> None:
    """Empty every table. On Postgres the TRUNCATE can be chosen as the victim of a deadlock with
    a background thread of a session app (its dispatcher's claims, housekeeping): tried again."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    for attempt in range(tries):
        try:
            with repo.db.write() as s:
                if repo.db.dialect == "postgresql":
                    s.execute(text("TRUNCATE " + ", ".join(tables) + " CASCADE"))
                else:
                    for t in tables:
                        s.execute(text(f"DELETE FROM {t}"))
            return
        except DBAPIError as exc:
            if "deadlock detected" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


@dataclass
class Api:
    client: TestClient
    repo: JobRepo
    settings: Settings
    backend: str

    def submit(self, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        r = self.client.post("/api/v1/jobs", json=body or PRETRAIN, **kw)
        assert r.status_code == 201, r.text
        return r.json()

    def messages(self) -> list[dict[str, Any]]:
        self.client.app.state.dispatcher.drain()  # what its thread does within milliseconds
        return broker_messages(self.settings)

    def succeed(self, job_id: str) -> None:
        attempt = self.repo.claim_job(job_id, "w")
        assert attempt is not None
        assert self.repo.finish_job(job_id, attempt, "succeeded")


def broker_messages(settings: Settings) -> list[dict[str, Any]]:
    """Messages waiting in the filesystem broker: {queue, args, kwargs, task, priority}."""
    import base64
    import json

    folder = settings.data_dir / "broker" / "queue"
    out = []
    for name in sorted(os.listdir(folder)) if folder.exists() else []:
        msg = json.loads((folder / name).read_text())
        args, kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        out.append(
            {
                "queue": name.partition(".")[2].removesuffix(".msg"),
                "args": args,
                "kwargs": kwargs,
                "task": msg["headers"]["task"],
                "priority": msg["properties"].get("priority"),
            }
        )
    return out


@pytest.fixture(scope="session")
def app_env(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    data_dir = tmp_path_factory.mktemp(f"data-{backend.name}")
    settings = make_settings(data_dir, backend.url)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, app.state.repo, settings, backend.name)


@pytest.fixture
def api(app_env: Api) -> Api:
    reset_database(app_env.repo)
    for sub in ("broker/queue", "artifacts"):
        folder = app_env.settings.data_dir / sub
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    return app_env


# A real uvicorn process ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    settings: Settings
    repo: JobRepo
    proc: subprocess.Popen[bytes]
    log: Path


def start_uvicorn(
    settings: Settings,
    env_extra: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 60.0,
    ready_path: str = "/readyz",
) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn on a free loopback port; returns once `ready_path` answers 200 (/healthz when
    tokens are configured: every other route then needs one)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(
        {
            "SGMIM_DATA_DIR": str(settings.data_dir),
            "SGMIM_DATABASE_URL": settings.database_url or "",
            "SGMIM_SSE_POLL_INTERVAL_S": "0.05",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.broker_url:
        env["SGMIM_BROKER_URL"] = settings.broker_url
    env.update(env_extra or {})
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "service.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}: {log.read_text() if log else ''}")
        try:
            if httpx.get(url + ready_path, timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("uvicorn did not become ready")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def own_database(backend: Backend, request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    """The URL of a database of its own on the backend's server, dropped afterwards. A service
    started on it has the only dispatcher there: every dispatcher sends each unsent job of its
    database to its own broker folder, so one sharing the session database (the `app_env` app's,
    the other tests') would take some of its jobs."""
    admin_url = request.getfixturevalue("pg_admin_url") if backend.name == "postgres" else None
    database_url = create_pg_database(admin_url) if admin_url else f"sqlite:///{data_dir / 'own.db'}"
    try:
        yield database_url
    finally:
        if admin_url:
            drop_pg_database(admin_url, database_url)


@pytest.fixture(scope="session")
def server(
    backend: Backend, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A uvicorn process on a database of its own (see `own_database`)."""
    data_dir = tmp_path_factory.mktemp(f"uvicorn-{backend.name}")
    with own_database(backend, request, data_dir) as database_url:
        settings = make_settings(data_dir, database_url)
        log = data_dir / "uvicorn.log"
        proc, url = start_uvicorn(settings, log=log)
        from service.db.session import Database

        db = Database.from_settings(settings)
        try:
            yield Server(url, settings, JobRepo(db), proc, log)
        finally:
            stop(proc)
            db.dispose()


@pytest.fixture(scope="session")
def session_repo(backend: Backend) -> Iterator[JobRepo]:
    from service.db import migrate
    from service.db.session import Database

    db = Database(backend.url)
    migrate.upgrade(db.engine)
    try:
        yield JobRepo(db)
    finally:
        db.dispose()


@pytest.fixture
def repo(session_repo: JobRepo) -> JobRepo:
    reset_database(session_repo)
    return session_repo


def submit_spec(repo: JobRepo, kind: str = "pretrain", name: str = "t", **fields: Any) -> str:
    """Store a job directly (DB level), as the API would after validation."""
    spec = {"kind": kind, "name": name, "priority": 5, "max_restarts": 2, **fields}
    return repo.submit(spec, queue="sgmim").job.id
