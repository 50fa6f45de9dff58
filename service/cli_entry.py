"""`run_server`: what `sgmim serve` calls.

    from service.cli_entry import run_server
    run_server("127.0.0.1", 8000)                    # API only
    run_server("127.0.0.1", 8000, with_worker=True)  # + one local Celery worker (embedded mode)

It applies the migrations, refuses a non-loopback address unless a token is configured
(SGMIM_API_TOKENS, SGMIM_TOKEN_FILE or an active row of api_tokens), then runs uvicorn.

The embedded worker never outlives the server: SIGTERM or Ctrl-C stops the server and then the
worker (uvicorn re-raises the signal it caught once it has shut down; SIGTERM's handler here
turns that into SystemExit, so the worker is stopped before the process ends), and a server
killed outright takes the worker with it (PR_SET_PDEATHSIG in the worker, and in its pool
children, see worker/tasks.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import Any

from service.auth import is_loopback
from service.db import migrate
from service.db.repo import JobRepo
from service.db.session import Database
from service.settings import Settings
from sgmim.train.launch import die_with_parent

log = logging.getLogger("service")


class ServerConfigError(SystemExit):
    """Refusal to start; uncaught, Python prints the message and exits with status 1."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


def prepare(settings: Settings, host: str) -> None:
    """Migrate the database and enforce the token-on-non-loopback rule."""
    db = Database.from_settings(settings)
    try:
        migrate.upgrade(db.engine)
        if is_loopback(host):
            return
        if settings.configured_tokens or JobRepo(db).has_active_tokens():
            return
    finally:
        db.dispose()
    raise ServerConfigError(
        f"refusing to listen on {host}: it is not a loopback address and no API token is configured. "
        "Set SGMIM_API_TOKENS=<token>[,<token>...] (or SGMIM_TOKEN_FILE=<file>), or bind to 127.0.0.1."
    )


def start_worker(settings: Settings, queues: list[str] | None = None) -> subprocess.Popen[bytes]:
    """One local worker (`python -m worker`: concurrency 1, prefork pool), the same program as
    `sgmim worker`, consuming the default queue."""
    queues = queues or [settings.default_queue]
    env = {**os.environ, "SGMIM_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["SGMIM_DATABASE_URL"] = settings.database_url
    if settings.broker_url:
        env["SGMIM_BROKER_URL"] = settings.broker_url
    if settings.artifact_root:
        env["SGMIM_ARTIFACT_ROOT"] = str(settings.artifact_root)
    cmd = [sys.executable, "-m", "worker", "--queues", ",".join(queues), "--concurrency", "1"]
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=die_with_parent)


def settings_environment(settings: Settings) -> dict[str, str]:
    """The environment that gives each API process these settings; migrations already ran."""
    env = {"SGMIM_MIGRATE_ON_START": "false"}
    for name in settings.model_fields_set - {"migrate_on_start"}:
        value = getattr(settings, name)
        if isinstance(value, list):
            env["SGMIM_" + name.upper()] = ",".join(map(str, value))
        elif value is not None:
            env["SGMIM_" + name.upper()] = str(value)
    return env


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_server(
    host: str | None = None,
    port: int | None = None,
    with_worker: bool = False,
    settings: Settings | None = None,
    **uvicorn_kwargs: Any,
) -> None:
    import uvicorn

    from service.main import create_app

    settings = settings or Settings()
    host = host or settings.host
    port = settings.port if port is None else port
    prepare(settings, host)
    worker = start_worker(settings) if with_worker else None
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        # a backstop: the event streams end on the stop signal (service/stopping.py); any
        # other response still open after this long is cancelled
        uvicorn_kwargs.setdefault("timeout_graceful_shutdown", 5)
        uvicorn_kwargs.setdefault("timeout_keep_alive", settings.keep_alive_s)
        uvicorn_kwargs.setdefault("access_log", settings.access_log)
        if settings.api_workers > 1:
            # uvicorn starts each process from the import string (the app factory reads the
            # settings from the environment, which the processes inherit)
            os.environ.update(settings_environment(settings))
            uvicorn.run("service.main:create_app", factory=True, host=host, port=port, proxy_headers=False,
                        workers=settings.api_workers, **uvicorn_kwargs)
        else:
            uvicorn.run(create_app(settings), host=host, port=port, proxy_headers=False, **uvicorn_kwargs)
    finally:
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                # the whole worker (the pool child supervising a run too: the run dies with it,
                # and the reaper requeues the job when a worker runs again)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
