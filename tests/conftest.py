"""Fixtures of the whole suite."""

import os
from collections.abc import Iterator

import pytest


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
