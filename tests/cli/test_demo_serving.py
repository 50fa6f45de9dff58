"""`sgmim demo --keep-serving` prints the dashboard's address and keeps the API and the worker up
until Ctrl-C. The demo's jobs are replaced by nothing here (test_demo.py runs them all)."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.cli.conftest import ROOT, clean_env

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
import sgmim.cli.demo as demo
demo.render_data = lambda data_dir, size: None
demo.run_jobs = lambda api, data_dir, size, workdir: {"metrics": {}, "pretrain": {}, "study": workdir}
from sgmim.cli import app
app(["demo", "--size", "small", "--workdir", sys.argv[1], "--keep-serving"])
"""


def test_keep_serving_prints_the_dashboard_and_stops_on_ctrl_c(tmp_path):
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path / "demo")], cwd=ROOT,
                                env=clean_env(COLUMNS="200"), stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while "keep serving" not in out.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        text = out.read_text()
        assert "keep serving" in text, text[-3000:]
        url = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/", text).group(1)
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "<h1>Jobs</h1>" in page.text
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
