"""Fixtures of the whole suite."""

import os
from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(scope="session", autouse=True)
def _clean_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No SGMIM_* setting of the developer's shell leaks into the settings the tests build
    (SGMIM_TEST_* variables, which point the tests at other servers, stay). Runs keep their
    caches (compiled kernels, rendered scenes) in one folder of the session, not in ~/.cache."""
    saved = {k: v for k, v in os.environ.items()
             if k.startswith("SGMIM_") and not k.startswith("SGMIM_TEST_")}
    for k in saved:
        del os.environ[k]
    os.environ["SGMIM_CACHE_DIR"] = str(tmp_path_factory.mktemp("sgmim-cache"))
    yield
    os.environ.pop("SGMIM_CACHE_DIR", None)
    os.environ.update(saved)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A Postgres URL whose role may create databases (tests/services.py says which server);
    the test is skipped, or fails under SGMIM_TEST_REQUIRE_SERVICES=1, when there is none."""
    try:
        with services.postgres() as url:
            yield url
            return
    except services.Unavailable as e:
        why = str(e)
    services.skip_or_fail("Postgres", services.PG_ENV, why)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[services.RedisServer]:
    """A Redis server (tests/services.py says which); skipped or failed like `pg_admin_url`."""
    try:
        with services.redis_server() as server:
            yield server
            return
    except services.Unavailable as e:
        why = str(e)
    services.skip_or_fail("Redis", services.REDIS_ENV, why)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for what, where in services.USED.items():
        terminalreporter.write_line(f"{what} of the tests: {where}")
