"""`docker-compose config -q` on the compose files, as CI runs it (Debian's docker-compose 1.29.2:
`apt-get install --no-install-recommends docker-compose`). It validates the file against the
compose schema and interpolates every variable, offline and without a Docker engine.
Skipped, with the reason, where the binary is missing."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.helpers import COMPOSE, ENV_EXAMPLE, OVERRIDES, ROOT

DOCKER_COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (CI: apt-get install -y --no-install-recommends docker-compose)")

# The file sets a box of each kind uses (deploy/README.md).
COMBINATIONS = {
    "single box": [],
    "box 1 of several": ["compose.primary.yml"],
    "other boxes": ["compose.worker-only.yml"],
    "box 1, multi-node": ["compose.primary.yml", "compose.multinode.yml"],
    "other boxes, multi-node": ["compose.worker-only.yml", "compose.multinode.yml"],
}


def example_env(tmp_path: Path, drop: str | None = None) -> Path:
    """deploy/.env.example with every variable given a value (the empty required ones made up,
    the commented optional ones switched on), minus `drop`."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if not m:
            continue
        name, value = m[1], m[2]
        if name == drop:
            continue
        if not value:
            value = {"SGMIM_DATASETS_DIR": "/srv/datasets", "SGMIM_SHARED_ARTIFACTS_DIR": "/mnt/shared/sgmim",
                     "SGMIM_PRIMARY_BIND": "10.0.0.1", "SGMIM_PRIMARY_HOST": "10.0.0.1",
                     "SGMIM_IMAGE_PREFIX": "registry.example.com/ml/"}.get(name, f"test-{name.lower()}")
        lines.append(f"{name}={value}")
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def docker_compose(env_file: Path, files: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(COMPOSE)]
    for name in files:
        cmd += ["-f", str(OVERRIDES[name])]
    # A clean environment: variables of the shell running the tests must not fill in for .env.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_version():
    out = subprocess.run([DOCKER_COMPOSE, "version", "--short"], capture_output=True, text=True).stdout
    assert re.match(r"\d+\.\d+", out.strip()), out


@pytest.mark.parametrize("label", list(COMBINATIONS))
def test_config_validates(tmp_path, label):
    done = docker_compose(example_env(tmp_path), COMBINATIONS[label], "config", "-q")
    assert done.returncode == 0, f"{label}: {done.stderr}"


def test_config_validates_with_the_monitoring_profile(tmp_path):
    done = docker_compose(example_env(tmp_path), [], "--profile", "monitoring", "config", "--services")
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"api", "worker", "postgres", "redis", "flower"}
    # (1.29's `config --services` lists services of inactive profiles too; the profile itself:)
    done = docker_compose(example_env(tmp_path), [], "config")
    flower_profile = r"^  flower:\n(    .*\n)*?    profiles:\n    - monitoring$"
    assert re.search(flower_profile, done.stdout, re.M), done.stdout


@pytest.mark.parametrize("missing", ["POSTGRES_PASSWORD", "REDIS_PASSWORD", "SGMIM_API_TOKENS",
                                     "SGMIM_DATASETS_DIR"])
def test_required_values_are_enforced(tmp_path, missing):
    done = docker_compose(example_env(tmp_path, drop=missing), [], "config", "-q")
    assert done.returncode != 0, f"compose started without {missing}"
    assert missing in done.stderr, done.stderr


def test_secrets_reach_the_services(tmp_path):
    done = docker_compose(example_env(tmp_path), [], "config")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "postgresql+psycopg://sgmim:test-postgres_password@postgres:5432/sgmim" in out
    assert "redis://:test-redis_password@redis:6379/0" in out
    assert "SGMIM_API_TOKENS: test-sgmim_api_tokens" in out


def test_worker_only_points_at_box_one(tmp_path):
    done = docker_compose(example_env(tmp_path), ["compose.worker-only.yml"], "config")
    assert done.returncode == 0, done.stderr
    assert "@10.0.0.1:5432/sgmim" in done.stdout and "@10.0.0.1:6379/0" in done.stdout
    assert "device: /mnt/shared/sgmim" in done.stdout
