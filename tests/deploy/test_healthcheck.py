"""deploy/healthcheck.py (`sgmim-healthcheck api|worker` in the images)."""

from __future__ import annotations

import importlib.util
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from tests.deploy.helpers import ROOT


@pytest.fixture(scope="module")
def healthcheck():
    spec = importlib.util.spec_from_file_location("sgmim_healthcheck", ROOT / "deploy" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def readyz(monkeypatch):
    """A stand-in API on a free port: /readyz answers 200 to `Bearer good`, 401 otherwise,
    503 when `state["ready"]` is False."""
    state = {"ready": True, "seen": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["seen"].append((self.path, self.headers.get("Authorization")))
            if self.headers.get("Authorization") != "Bearer good":
                code = 401
            else:
                code = 200 if state["ready"] else 503
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"status": "x"}')

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SGMIM_PORT", str(server.server_address[1]))
    monkeypatch.delenv("SGMIM_TOKEN_FILE", raising=False)
    yield state
    server.shutdown()


def test_api_healthy_with_the_first_token(healthcheck, readyz, monkeypatch):
    monkeypatch.setenv("SGMIM_API_TOKENS", " good , other")
    assert healthcheck.main(["api"]) == 0
    assert readyz["seen"] == [("/readyz", "Bearer good")]


def test_api_token_from_file(healthcheck, readyz, monkeypatch, tmp_path):
    monkeypatch.delenv("SGMIM_API_TOKENS", raising=False)
    (tmp_path / "tokens").write_text("# comment\n\ngood\n")
    monkeypatch.setenv("SGMIM_TOKEN_FILE", str(tmp_path / "tokens"))
    assert healthcheck.main(["api"]) == 0


def test_api_unhealthy(healthcheck, readyz, monkeypatch, capsys):
    monkeypatch.setenv("SGMIM_API_TOKENS", "wrong")
    assert healthcheck.main(["api"]) == 1
    assert "401" in capsys.readouterr().out
    monkeypatch.setenv("SGMIM_API_TOKENS", "good")
    readyz["ready"] = False
    assert healthcheck.main(["api"]) == 1


def test_api_unreachable(healthcheck, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("SGMIM_PORT", str(port))
    assert healthcheck.main(["api"]) == 1


def test_worker_ping(healthcheck, monkeypatch):
    import service.queue

    host = socket.gethostname()
    replies = [{"celery@elsewhere": {"ok": "pong"}}]
    fake = SimpleNamespace(control=SimpleNamespace(ping=lambda timeout: replies))
    monkeypatch.setattr(service.queue, "app", fake, raising=False)
    assert healthcheck.main(["worker"]) == 1, "another box's node does not make this one healthy"
    replies.append({f"sgmim@{host}": {"ok": "pong"}})
    assert healthcheck.main(["worker"]) == 0

    def broken(timeout):
        raise ConnectionError("broker down")

    fake.control.ping = broken
    assert healthcheck.main(["worker"]) == 1


def test_usage(healthcheck):
    assert healthcheck.main([]) == 2
    assert healthcheck.main(["db"]) == 2
