"""Fixtures of the deployment tests (tests/deploy/helpers.py holds the parsing)."""

from __future__ import annotations

import pytest

from tests.deploy.helpers import COMPOSE, OVERRIDES, load_yaml


@pytest.fixture(scope="session")
def compose() -> dict:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="session")
def overrides() -> dict[str, dict]:
    return {name: load_yaml(path) for name, path in OVERRIDES.items()}
