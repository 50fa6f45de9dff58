"""The servers of the Postgres and Redis tests (tests/services.py), seen from outside: a pytest
run of a few of those tests with the configured servers on closed ports."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import NO_THROWAWAY_ENV, PG_ENV, REDIS_ENV, REQUIRE_ENV, free_port

ROOT = Path(__file__).resolve().parents[1]
# two on Postgres, one on Redis: small ones, each needs its server from the first statement on
SUBSET = [
    "tests/service/test_repo.py::test_migrations_build_exactly_the_models_and_downgrade[postgres]",
    "tests/service/test_repo.py::test_claim_is_atomic_one_winner[postgres]",
    "tests/service/test_broker.py::test_redis_enqueue_priorities_and_queue_depth",
]

pytestmark = pytest.mark.slow


@dataclass
class Run:
    returncode: int
    output: str
    outcomes: dict[str, tuple[str, str]]  # test name -> (passed | skipped | failure | error, message)


def run_subset(tmp_path: Path, **env_changes: str | None) -> Run:
    """SUBSET in a pytest of its own, with the configured servers on ports where nothing listens."""
    env = {**os.environ, PG_ENV: f"postgresql://postgres@127.0.0.1:{free_port()}/test",
           REDIS_ENV: f"redis://127.0.0.1:{free_port()}/11"}  # fmt: skip
    env.pop(REQUIRE_ENV, None)  # CI's own setting
    env.pop(NO_THROWAWAY_ENV, None)
    for key, value in env_changes.items():
        if value is not None:
            env[key] = value
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
         f"--basetemp={tmp_path / 'basetemp'}", *SUBSET],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        found = [(child.tag, child.get("message", "")) for child in case if child.tag != "properties"]
        outcomes[case.get("name")] = found[0] if found else ("passed", "")
    assert len(outcomes) == len(SUBSET), done.stdout[-3000:]
    return Run(done.returncode, done.stdout + done.stderr, outcomes)


def nothing_listens(url: str) -> bool:
    host, port = re.search(r"@?([\d.]+):(\d+)", url.split("//", 1)[1]).groups()  # type: ignore[union-attr]
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def test_with_nothing_configured_the_tests_run_on_throwaway_servers_that_stop_at_the_end(tmp_path):
    run = run_subset(tmp_path)
    assert run.returncode == 0, run.output[-4000:]
    assert set(run.outcomes.values()) == {("passed", "")}, run.outcomes
    used = dict(re.findall(r"^(Postgres|Redis) of the tests: a throwaway server at (\S+):", run.output, re.M))
    assert used.keys() == {"Postgres", "Redis"}, run.output[-2000:]
    assert all(nothing_listens(url) for url in used.values()), f"still listening after the run: {used}"


def test_with_no_server_at_all_they_are_skipped_saying_how_to_provide_one(tmp_path):
    run = run_subset(tmp_path, **{NO_THROWAWAY_ENV: "1"})
    assert run.returncode == 0, run.output[-4000:]
    assert {outcome for outcome, _ in run.outcomes.values()} == {"skipped"}, run.outcomes
    for name, (_, message) in run.outcomes.items():
        env = REDIS_ENV if "redis" in name else PG_ENV
        assert f"start one or point {env} at one" in message and "Connection refused" in message, message
        assert f"({NO_THROWAWAY_ENV}=1)" in message and "\n" not in message, message


def test_with_no_server_at_all_they_fail_when_servers_are_required(tmp_path):
    run = run_subset(tmp_path, **{NO_THROWAWAY_ENV: "1", REQUIRE_ENV: "1"})
    assert run.returncode == 1, run.output[-4000:]
    assert {outcome for outcome, _ in run.outcomes.values()} == {"error"}, run.outcomes
    assert all(f"[{REQUIRE_ENV}=1]" in message for _, message in run.outcomes.values()), run.outcomes
