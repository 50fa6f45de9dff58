"""A real server for the CLI tests: `sgmim serve --with-worker` on the embedded defaults."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sgmim.train.launch import free_port

ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec-test"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str], timeout: float = 300,
        cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sgmim.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def start_server(state: Path, *extra: str, port: int | None = None, **settings: str):
    """`sgmim serve` on `port` (default: a free one) over the data directory `state`: (process, url)."""
    port = port or free_port()
    env = clean_env(SGMIM_DATA_DIR=str(state), **settings)
    log = (state / "server.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "sgmim.cli", "serve", "--port", str(port), *extra],
                            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    tokens = settings.get("SGMIM_API_TOKENS", "").split(",")
    headers = {"Authorization": f"Bearer {tokens[0]}"} if tokens[0] else {}
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail("server did not start:\n" + (state / "server.log").read_text()[-3000:])
        time.sleep(0.3)
    return proc, url


def stop_server(proc: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to the server's process group, SIGKILL after `grace` seconds. A teardown, which
    checks nothing of the stop, gives 1 s: an idle worker's warm shutdown alone takes about 6 s
    (Celery's loop on the filesystem broker), and a killed server's worker dies with it
    (PR_SET_PDEATHSIG, as tests/cli/test_serve_lifecycle.py checks)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    # the tests' data folders (tmp_path) are data roots, as /datasets is in deployment
    proc, url = start_server(state, "--with-worker", SGMIM_WEBHOOK_SECRET=WEBHOOK_SECRET,
                             SGMIM_WEBHOOK_BACKOFF_S="0.5", SGMIM_NOTIFY_INTERVAL_S="0.5",
                             SGMIM_DATA_ROOTS=str(tmp_path_factory.getbasetemp()))
    yield {"url": url, "env": clean_env(SGMIM_URL=url, XDG_CONFIG_HOME=str(state / "config")),
           "state": state}
    stop_server(proc, grace=1)
