"""Keep-alive connections under bursts (issue 14, finding 9), against `python -m service` (what
`sgmim serve` runs). The cause: uvicorn closed idle connections after 5 s, exactly the time
httpx keeps idle pooled connections, so a request sent on a pooled connection as the server
closed it got no response. The server now keeps idle connections well past that."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from sgmim.train.launch import free_port
from tests.service.conftest import PRETRAIN, ROOT, stop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for both tests: neither depends on what the other left on it."""
    tmp_path = tmp_path_factory.mktemp("keep-alive")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(SGMIM_DATA_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "service", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.2)
    try:
        yield url
    finally:
        stop(proc)
        log.close()


def get(sock: socket.socket) -> bytes:
    """One whole response (headers and a Content-Length body); b"" when the server closed."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    length = int(headers[b"content-length"])
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_an_idle_keep_alive_connection_outlives_the_clients_pool_expiry(served: str):
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert get(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6.0)  # past httpx's keepalive_expiry (5 s) and uvicorn's old default (5 s)
        assert get(sock).startswith(b"HTTP/1.1 200"), "the server closed an idle connection too early"


def test_bursts_of_posts_on_keep_alive_connections_all_get_answers(served: str):
    clients = [httpx.Client(base_url=served, timeout=60) for _ in range(50)]
    failures: list[str] = []

    def post(i: int) -> None:
        try:
            r = clients[i % len(clients)].post("/api/v1/jobs", json={**PRETRAIN, "name": f"burst-{i}"})
            if r.status_code != 201:
                failures.append(f"{r.status_code} {r.text[:100]}")
        except httpx.HTTPError as exc:
            failures.append(repr(exc))

    try:
        with ThreadPoolExecutor(len(clients)) as pool:
            for burst in range(8):
                if burst:  # (not before the first: no connection is pooled yet)
                    time.sleep(4.95)  # the pooled connections idle just under httpx's 5 s expiry
                list(pool.map(post, range(200)))
    finally:
        for client in clients:
            client.close()
    assert failures == []
