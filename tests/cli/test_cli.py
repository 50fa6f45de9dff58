"""The `sgmim` CLI against a running server (API + worker on the embedded defaults)."""

import hashlib
import hmac
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image
from safetensors import safe_open

from tests.cli.conftest import ROOT, WEBHOOK_SECRET, clean_env, cli, start_server, stop_server

pytestmark = pytest.mark.slow
TINY = str(ROOT / "examples" / "jobs" / "pretrain-tiny.yaml")
SHORT = ["--set", "config.schedule.epochs=null", "--set", "config.schedule.steps=6",
         "--set", "config.schedule.checkpoint_every=3", "--set", "config.data.num_images=64"]
JOB_ID = re.compile(r"submitted job (\S+)")


@pytest.fixture(scope="module")
def finished_job(server):
    done = cli("submit", TINY, *SHORT, "--watch", env={**server["env"], "COLUMNS": "80"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    bar = next(line for line in done.stdout.splitlines() if "6/6" in line)
    # at 80 columns the bar keeps step/total, epoch and the ETA; the loss values give way
    assert "epoch " in bar and re.search(r"\d:\d\d:\d\d", bar) and len(bar) <= 80, bar
    return JOB_ID.search(done.stdout).group(1)


@pytest.fixture(scope="module")
def finetuned_job(server, finished_job):
    spec = str(ROOT / "examples" / "jobs" / "finetune-depth-tiny.yaml")
    done = cli("submit", spec, "--parent", finished_job,
               "--set", "config.schedule.epochs=null", "--set", "config.schedule.steps=2",
               "--set", "config.data.num_images=16", "--watch", env=server["env"])
    assert done.returncode == 0, done.stdout + done.stderr
    return JOB_ID.search(done.stdout).group(1)


def wait_status(server, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := show_json(server, job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


def show_json(server, job_id: str) -> dict:
    return json.loads(cli("show", job_id, "--json", env=server["env"]).stdout)


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
    # piped: the raw lines, never wrapped at 80 columns nor coloured
    served = [x["line"] for x in httpx.get(f"{server['url']}/api/v1/jobs/{finished_job}/logs",
                                             params={"tail": 500}).json()["lines"]]
    assert logs.stdout.splitlines() == served
    assert max(map(len, served)) > 80 and "\x1b[" not in logs.stdout


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


def test_download_names_the_file_as_the_server_does(server, finished_job, tmp_path):
    done = cli("download", finished_job, env=server["env"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [f"{finished_job}-encoder.safetensors"]
    url = f"{server['url']}/api/v1/jobs/{finished_job}/checkpoints"
    head = httpx.head(f"{url}/encoder")
    assert head.status_code == 200 and head.content == b""
    written = tmp_path / f"{finished_job}-encoder.safetensors"
    assert int(head.headers["content-length"]) == written.stat().st_size
    assert "encoder.safetensors" in head.headers["content-disposition"]
    tar_head = httpx.head(f"{url}/global_step6")
    assert tar_head.status_code == 200 and int(tar_head.headers["content-length"]) > 0
    assert httpx.head(f"{url}/nosuch").status_code == 404


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` for a terminal")
def test_download_draws_a_progress_bar_on_a_terminal_only(server, finished_job, tmp_path):
    command = shlex.join([sys.executable, "-m", "sgmim.cli", "download", finished_job,
                          "-o", str(tmp_path / "tty.safetensors")])
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], env=server["env"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert tty.returncode == 0, tty.stdout
    bar = re.compile(r"\d+(\.\d+)?/\d+(\.\d+)? (bytes|kB|MB)")
    assert bar.search(tty.stdout), tty.stdout
    piped = cli("download", finished_job, "-o", str(tmp_path / "pipe.safetensors"), env=server["env"])
    assert piped.returncode == 0 and not bar.search(piped.stdout), piped.stdout


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


def test_small_frictions(server, finished_job, tmp_path):
    bogus = cli("jobs", "--status", "bogus", env=server["env"])
    assert bogus.returncode == 2
    assert "queued, running, cancelling, succeeded, failed, cancelled" in bogus.stderr
    assert "query." not in bogus.stderr
    capital = cli("jobs", "--status", "Succeeded", env=server["env"])
    assert capital.returncode == 0 and finished_job in capital.stdout
    resumed = cli("resume", finished_job, env=server["env"])
    assert resumed.returncode == 2 and f"job {finished_job}: it already succeeded" in resumed.stderr
    typo = cli("submit", TINY, "--set", "config.optim.base_lrr=0.1", env=server["env"])
    assert typo.returncode == 2
    assert "config.optim.base_lrr: unknown key; did you mean 'base_lr'?" in typo.stderr
    nosuch = cli("plot", finished_job, "--metric", "nosuch", "-o", str(tmp_path / "x.png"), env=server["env"])
    assert nosuch.returncode == 2 and "no metric 'nosuch'" in nosuch.stderr and "loss" in nosuch.stderr
    assert not (tmp_path / "x.png").exists()


def test_sgmim_port_moves_the_client_default(server):
    port = server["url"].rsplit(":", 1)[1]
    done = cli("jobs", env=clean_env(SGMIM_PORT=port, XDG_CONFIG_HOME=str(server["state"] / "none")))
    assert done.returncode == 0 and "pretrain" in done.stdout, done.stderr


def test_token_errors_name_the_flag_and_the_variable(tmp_path):
    proc, url = start_server(tmp_path, SGMIM_API_TOKENS="s3cret")
    try:
        env = clean_env(SGMIM_URL=url, XDG_CONFIG_HOME=str(tmp_path))
        missing = cli("jobs", env=env)
        assert missing.returncode == 1 and "--token" in missing.stderr and "SGMIM_TOKEN" in missing.stderr
        assert "Authorization" not in missing.stderr
        wrong = cli("--token", "nope", "jobs", env=env)
        assert wrong.returncode == 1 and "refused" in wrong.stderr and "--token" in wrong.stderr
        right = cli("jobs", env={**env, "SGMIM_TOKEN": "s3cret"})
        assert right.returncode == 0, right.stderr
    finally:
        stop_server(proc)


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


def test_tags_notes_and_the_job_list_filters(server, finished_job):
    env = server["env"]
    assert cli("tag", finished_job, "baseline", "tiny", env=env).returncode == 0
    assert cli("tag", finished_job, "--remove", "tiny", env=env).returncode == 0
    assert cli("note", finished_job, "lr 1e-3, the reference run", env=env).returncode == 0
    shown = cli("show", finished_job, env=env).stdout
    assert "baseline" in shown and "tiny" not in shown.split("tags")[1].splitlines()[0]
    assert "the reference run" in shown and re.search(r"disk\s+[\d.]+ (KiB|MiB)", shown)

    def listed(*args: str) -> list[str]:
        done = cli("jobs", "--json", *args, env=env)
        assert done.returncode == 0, done.stderr
        return [j["id"] for j in json.loads(done.stdout)]

    assert finished_job in listed("--tag", "baseline")
    assert finished_job not in listed("--tag", "tiny")
    assert finished_job in listed("--search", "PRETRAIN-T", "--status", "succeeded", "--kind", "pretrain")
    assert finished_job not in listed("--search", "nosuchname")
    assert finished_job in listed("--since", "1h")
    assert finished_job not in listed("--since", "2099-01-01")
    row = json.loads(cli("jobs", "--json", "--tag", "baseline", env=env).stdout)[0]
    assert row["tags"] == ["baseline"] and row["disk_bytes"] > 0 and row["started_at"]
    table = cli("jobs", "--tag", "baseline", env={**env, "COLUMNS": "200"}).stdout
    assert "duration" in table and re.search(r"\d:\d\d:\d\d", table) and "baseline" in table
    bad = cli("jobs", "--since", "yesterday", env=env)
    assert bad.returncode == 2 and "2d, 12h" in bad.stderr


def test_compare_shows_metrics_side_by_side_with_lineage(server, finished_job, finetuned_job):
    done = cli("compare", finetuned_job, finished_job, env={**server["env"], "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert re.search(r"rmse\s+\d+\.\d{4}\s+-", done.stdout), done.stdout
    assert f"lineage of {finetuned_job}: {finished_job} → {finetuned_job}" in done.stdout
    assert f"lineage of {finished_job}: {finished_job}" in done.stdout


def test_prune_keeps_the_newest_tags_and_the_export(server, finished_job):
    env = server["env"]
    run_dir = server["state"] / "artifacts" / "jobs" / finished_job
    before = json.loads(cli("show", finished_job, "--json", env=env).stdout)["disk_bytes"]
    assert (run_dir / "checkpoints" / "global_step3").is_dir()
    done = cli("prune", finished_job, "--keep", "1", env=env)
    assert done.returncode == 0 and "removed global_step3" in done.stdout, done.stdout + done.stderr
    assert not (run_dir / "checkpoints" / "global_step3").exists()
    assert (run_dir / "checkpoints" / "global_step6").is_dir() and (run_dir / "export").is_dir()
    listing = cli("checkpoints", finished_job, env=env).stdout
    assert "global_step3" not in listing and "global_step6" in listing and "encoder" in listing
    after = json.loads(cli("show", finished_job, "--json", env=env).stdout)["disk_bytes"]
    assert after < before


class Hook(BaseHTTPRequestHandler):
    received: list[tuple[dict, bytes]] = []
    failures_left = 1

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append((dict(self.headers), body))
        status = 500 if Hook.failures_left > 0 else 200
        Hook.failures_left -= 1
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_on_a_terminal_state_signed_and_retried(server):
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook"
    try:
        done = cli("submit", TINY, *SHORT, "--set", "config.schedule.steps=400", "--webhook", url,
                   "--tag", "hooked", "--note", "watch me", env=server["env"])
        job_id = JOB_ID.search(done.stdout).group(1)
        cli("cancel", job_id, env=server["env"])
        wait_status(server, job_id, ("cancelled",))
        deadline = time.monotonic() + 60
        while len(Hook.received) < 2:
            assert time.monotonic() < deadline, Hook.received
            time.sleep(0.2)
    finally:
        hook.shutdown()
    for headers, body in Hook.received:
        expected = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-SGMIM-Signature"] == expected
        event = json.loads(body)
        assert event["job_id"] == job_id and event["status"] == "cancelled" and event["tags"] == ["hooked"]
    job = wait_status(server, job_id, ("cancelled",))
    deadline = time.monotonic() + 10
    while job["notify_state"] != "sent":
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = json.loads(cli("show", job_id, "--json", env=server["env"]).stdout)
    assert job["tags"] == ["hooked"] and job["note"] == "watch me"


def test_delete_and_archive(server, finished_job, finetuned_job):
    env = server["env"]
    submitted = cli("submit", TINY, *SHORT, "--set", "config.schedule.steps=400", env=env)
    running = JOB_ID.search(submitted.stdout)[1]
    wait_status(server, running, ("running",))
    refused = cli("delete", running, "--yes", env=env)
    assert refused.returncode == 2 and f"cannot delete job {running}: it is still running" in refused.stderr
    cli("cancel", running, env=env)
    wait_status(server, running, ("cancelled",))

    assert cli("archive", running, env=env).returncode == 0
    assert running not in cli("jobs", "--limit", "200", env=env).stdout
    assert running in cli("jobs", "--archived", env=env).stdout
    assert cli("archive", running, "--undo", env=env).returncode == 0
    assert running in cli("jobs", env=env).stdout

    run_dir = server["state"] / "artifacts" / "jobs" / finished_job
    kept = cli("delete", finished_job, "--yes", env=env)
    assert kept.returncode == 0 and "has children" in kept.stdout and finetuned_job in kept.stdout
    assert (run_dir / "export" / "encoder.safetensors").is_file()
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "train.log").exists()
    assert finished_job in cli("jobs", "--archived", env=env).stdout
    gone = cli("delete", finished_job, "--force", "--yes", env=env)
    assert gone.returncode == 0 and f"deleted job {finished_job}" in gone.stdout
    assert not run_dir.exists()
    assert cli("show", finished_job, env=env).returncode == 2
    child = json.loads(cli("show", finetuned_job, "--json", env=env).stdout)
    assert child["parent_id"] is None and child["status"] == "succeeded"
