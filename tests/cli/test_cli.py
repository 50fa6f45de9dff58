"""The `sgmim` CLI against a running server (API + worker on the embedded defaults)."""

import json
import re
import time

import httpx
import pytest
from PIL import Image
from safetensors import safe_open

from tests.cli.conftest import ROOT, clean_env, cli

pytestmark = pytest.mark.slow
TINY = str(ROOT / "examples" / "jobs" / "pretrain-tiny.yaml")
SHORT = ["--set", "config.schedule.epochs=null", "--set", "config.schedule.steps=6",
         "--set", "config.schedule.checkpoint_every=3", "--set", "config.data.num_images=64"]
JOB_ID = re.compile(r"submitted job (\S+)")


@pytest.fixture(scope="module")
def finished_job(server):
    done = cli("submit", TINY, *SHORT, "--watch", env={**server["env"], "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    assert "6/6" in done.stdout, "the bar ends with the run's total, however short the run"
    return JOB_ID.search(done.stdout).group(1)


def test_jobs_and_show(server, finished_job):
    listing = cli("jobs", "--kind", "pretrain", env=server["env"])
    assert listing.returncode == 0 and finished_job in listing.stdout and "succeeded" in listing.stdout
    shown = cli("show", finished_job, "--json", env=server["env"])
    job = json.loads(shown.stdout)
    assert job["status"] == "succeeded" and job["progress"]["step"] == 6
    assert job["progress"]["total_steps"] == 6 and "loss" in job["last_metrics"]
    human = cli("show", finished_job, env=server["env"])
    assert "succeeded" in human.stdout and "6/6" in human.stdout


def test_logs(server, finished_job):
    logs = cli("logs", finished_job, "--tail", "500", env=server["env"])
    assert logs.returncode == 0
    assert "step 6/6" in logs.stdout and "exported to" in logs.stdout


def test_checkpoints_and_download(server, finished_job, tmp_path):
    listing = cli("checkpoints", finished_job, env=server["env"])
    assert "global_step6" in listing.stdout and "encoder" in listing.stdout
    out = tmp_path / "encoder.safetensors"
    done = cli("download", finished_job, "-o", str(out), env=server["env"])
    assert done.returncode == 0, done.stderr
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["step"] == "6" and len(list(f.keys())) > 10
    tar = tmp_path / "tag.tar"
    done = cli("download", finished_job, "global_step6", "-o", str(tar), env=server["env"])
    assert done.returncode == 0 and tar.read_bytes()[257:262] == b"ustar"
    missing = cli("download", finished_job, "global_step999", env=server["env"])
    assert missing.returncode == 2 and "no checkpoint 'global_step999'" in missing.stderr


def test_plot_writes_a_png(server, finished_job, tmp_path):
    out = tmp_path / "curves.png"
    done = cli("plot", finished_job, finished_job, "-o", str(out), env=server["env"])
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_cancel_a_running_job(server):
    long = [*SHORT[:2], "--set", "config.schedule.steps=400", *SHORT[4:]]
    done = cli("submit", TINY, *long, env=server["env"])
    job_id = JOB_ID.search(done.stdout).group(1)
    deadline = time.monotonic() + 120
    while json.loads(cli("show", job_id, "--json", env=server["env"]).stdout)["status"] != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.5)
    cancelled = cli("cancel", job_id, env=server["env"])
    assert cancelled.returncode == 0 and "cancel" in cancelled.stdout
    watched = cli("watch", job_id, env=server["env"], timeout=60)
    assert watched.returncode == 2 and "cancelled" in watched.stdout
    again = cli("cancel", job_id, env=server["env"])
    assert again.returncode == 0
    resumed = cli("resume", job_id, env=server["env"])
    assert resumed.returncode == 0 and "queued" in resumed.stdout
    cli("cancel", job_id, env=server["env"])


def test_errors_are_one_readable_line(server, finished_job):
    bad = cli("submit", TINY, "--set", "config.optim.base_lr=-1", env=server["env"])
    assert bad.returncode == 2
    assert "config.optim.base_lr" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    conflict = cli("resume", finished_job, env=server["env"])
    assert conflict.returncode == 2 and "succeeded" in conflict.stderr
    unknown = cli("show", "nosuchjob", env=server["env"])
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr


def test_connection_refused_says_how_to_start(tmp_path):
    env = clean_env(SGMIM_URL="http://127.0.0.1:9", XDG_CONFIG_HOME=str(tmp_path))
    done = cli("jobs", env=env, timeout=60)
    assert done.returncode == 1
    assert "sgmim serve" in done.stderr and "Traceback" not in done.stderr


def test_url_and_token_from_the_config_file(server, tmp_path):
    config = tmp_path / "sgmim" / "config.yaml"
    config.parent.mkdir()
    config.write_text(f"url: {server['url']}\ntoken: unused\n")
    done = cli("jobs", env=clean_env(XDG_CONFIG_HOME=str(tmp_path)))
    assert done.returncode == 0 and "pretrain" in done.stdout
    assert httpx.get(f"{server['url']}/healthz").status_code == 200
