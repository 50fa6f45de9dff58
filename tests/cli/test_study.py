"""`sgmim study`: a 2 methods × 2 seeds grid end to end through `sgmim serve --with-worker`.

The CLI posts the study and follows it; the service advances the chains. The SimMIM row
pretrains from an image folder that does not exist yet, so both of its cells fail at their first
job; the folder is then rendered and one cell is retried alone (its follower stopped with Ctrl-C
once it follows), then the other, which runs beside it. The table must equal a hand computation
from the cells' eval.json in the run directories, and running the study again must submit
nothing. A second `sgmim worker` on the same data directory runs the cells two at a time, as a
box with two workers would (each job is mostly the trainer's imports, one core's work), which
halves the first round. A study no worker can run is followed until Ctrl-C, cancelled and
deleted.
"""

import json
import math
import re
import signal
import statistics
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.cli.conftest import ROOT, clean_env, cli, start_server, stop_server
from tests.train.conftest import SIDE_BY_SIDE

EXAMPLES = ROOT / "examples" / "jobs"
TINY_SCHEDULE = {"batch_size": 8, "steps": 2, "log_every": 1}


def write_study(folder, pretrain_data, name="tiny-methods", **changes):
    study = {
        "name": name,
        "pretrain": {"file": str(EXAMPLES / "pretrain-tiny.yaml"),
                     "set": {"config.data.num_images": 16, "config.optim.warmup_epochs": 0,
                             "config.schedule": TINY_SCHEDULE}},
        "finetune": {"file": str(EXAMPLES / "finetune-depth-tiny.yaml"),
                     "set": {"config.data.num_images": 16, "config.optim.warmup_epochs": 0,
                             "config.schedule": TINY_SCHEDULE, "config.eval_at_start": False}},
        "evaluate": {"file": str(EXAMPLES / "evaluate-depth-tiny.yaml")},
        "variants": [
            {"name": "simmim", "set": {"method": "simmim", "pretrain.config.data.source": "image_folder",
                                       "pretrain.config.data.root": str(pretrain_data)}},
            {"name": "sgmim", "set": {"method": "sgmim"}},
        ],
        "seeds": [0, 1],
        **changes,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """`sgmim serve --with-worker` (as tests/cli/conftest.py's `server`) and a second
    `sgmim worker` on its data directory, each job with one thread (two jobs that each take both
    cores thrash); the teardown kills both 1 s after SIGTERM (see `stop_server`)."""
    state = tmp_path_factory.mktemp("state")
    roots = str(tmp_path_factory.getbasetemp())
    # the service advances the studies every 0.2 s (default 2 s): each stage waits for a pass
    server, url = start_server(state, "--with-worker", SGMIM_DATA_ROOTS=roots, SGMIM_STUDY_INTERVAL_S="0.2",
                               **SIDE_BY_SIDE)
    env = clean_env(SGMIM_DATA_DIR=str(state), SGMIM_DATA_ROOTS=roots, **SIDE_BY_SIDE)
    with (state / "second-worker.log").open("ab") as log:  # started once the server has migrated
        second = subprocess.Popen([sys.executable, "-m", "sgmim.cli", "worker", "--name", "second"], env=env,
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield {"url": url, "env": clean_env(SGMIM_URL=url, XDG_CONFIG_HOME=str(state / "config")),
           "state": state}
    for proc in (second, server):
        stop_server(proc, grace=1)


def job_ids(url):
    return {j["id"] for j in httpx.get(f"{url}/api/v1/jobs", params={"limit": 200}).json()["items"]}


def popen_cli(*args, env):
    """The CLI in the background, unbuffered so that its lines tell how far it got."""
    return subprocess.Popen([sys.executable, "-m", "sgmim.cli", *args], env={**env, "PYTHONUNBUFFERED": "1"},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def status_report(study, env):
    """`sgmim study status --json` (a name or the study file): cell id → cell."""
    done = cli("study", "status", str(study), "--json", env=env)
    assert done.returncode == 0, done.stderr
    return {cell["id"]: cell for cell in json.loads(done.stdout)["cells"]}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 14 jobs: a few minutes on 2 idle cores, far more on a loaded box
def test_study_runs_retries_and_tabulates(two_workers, tmp_path):
    from sgmim.data.synthetic.export import write_synthetic_dataset

    server = two_workers
    env, url = server["env"], server["url"]
    pretrain_data = tmp_path / "pretrain-data"
    study, out = write_study(tmp_path, pretrain_data), tmp_path / "out"
    before = job_ids(url)

    first = cli("study", "run", str(study), "--out", str(out), "--poll", "0.5", env=env, timeout=900)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "cell simmim-s0: pretrain job" in first.stdout and "cell simmim-s1: pretrain job" in first.stdout
    assert "sgmim study retry tiny-methods" in first.stdout
    assert len(job_ids(url) - before) == 2 + 2 * 3  # two failed pretrains, two whole chains
    listed = httpx.get(f"{url}/api/v1/studies").json()["items"]
    assert [(s["name"], s["done"], s["stopped"]) for s in listed] == [("tiny-methods", 2, 2)]
    report = status_report("tiny-methods", env)
    assert report["simmim-s0"]["stages"]["pretrain"]["status"] == "failed"
    assert report["simmim-s0"]["stages"]["finetune"]["status"] == "pending"
    assert report["sgmim-s1"]["stages"]["evaluate"]["status"] == "succeeded"

    # the data arrives; one failed cell is retried alone (the study named by its file), and the
    # CLI is stopped once it follows: the other cell's retry below then runs beside it
    write_synthetic_dataset(pretrain_data, 16, (64, 64), "train")
    made = job_ids(url)
    resumed = {cell: report[cell]["stages"]["pretrain"]["job_id"] for cell in ("simmim-s0", "simmim-s1")}
    alone = popen_cli("study", "retry", str(study), "--out", str(out), "--cell", "simmim-s0", "--poll", "0.5",
                      env=env)
    assert alone.stdout.readline().startswith("study tiny-methods retried: ")
    assert re.match(r"\S+-s\d: (pretrain|finetune|evaluate) ", alone.stdout.readline())  # following it
    alone.send_signal(signal.SIGINT)
    said, err = alone.communicate(timeout=30)
    assert alone.returncode == 130, said + err
    assert "the service keeps advancing study tiny-methods" in said
    report = status_report(study, env)
    assert report["simmim-s0"]["stages"]["pretrain"]["status"] != "failed"
    assert report["simmim-s1"]["stages"]["pretrain"]["status"] == "failed"

    rest = cli("study", "retry", "tiny-methods", "--out", str(out), "--poll", "0.5", env=env, timeout=900)
    assert rest.returncode == 0, rest.stdout[-3000:] + rest.stderr[-3000:]
    finished = job_ids(url)
    assert len(finished - before) == 2 + 2 * 2 + 2 * 3
    report = status_report(study, env)
    for cell, pretrain in resumed.items():  # each retried cell resumed its pretraining job
        stages = report[cell]["stages"]
        assert stages["pretrain"]["job_id"] == pretrain and stages["evaluate"]["status"] == "succeeded"
    assert finished - made == {report[cell]["stages"][stage]["job_id"] for cell in resumed
                               for stage in ("finetune", "evaluate")}

    # running the study again submits nothing
    again = cli("study", "run", str(study), "--out", str(out), env=env, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "0 new job(s) submitted" in again.stdout
    assert job_ids(url) == finished

    # the table equals a hand computation from the eval.json of each cell's evaluation job
    report = status_report("tiny-methods", env)
    artifacts = server["state"] / "artifacts" / "jobs"
    results = json.loads((out / "results.json").read_text())
    assert results["baseline"] == "simmim"
    for metric in ("rmse", "abs_rel", "delta1"):
        by_row = {}
        for cell in report.values():
            run = artifacts / cell["stages"]["evaluate"]["job_id"]
            evaluation = json.loads((run / "eval.json").read_text())
            by_row.setdefault(cell["row"], {})[cell["seed"]] = evaluation["metrics"][metric]
            assert json.loads((out / "cells" / cell["id"] / "eval.json").read_text()) == evaluation
        rows = {r["row"]: r for r in results["metrics"][metric]}
        for row, values in by_row.items():
            xs = [values[0], values[1]]
            assert rows[row]["n"] == 2
            assert math.isclose(rows[row]["mean"], statistics.mean(xs), rel_tol=1e-12)
            assert math.isclose(rows[row]["std"], statistics.stdev(xs), rel_tol=1e-9, abs_tol=1e-15)
        diffs = [by_row["sgmim"][s] - by_row["simmim"][s] for s in (0, 1)]
        assert math.isclose(rows["sgmim"]["diff"], statistics.mean(diffs), rel_tol=1e-9, abs_tol=1e-15)
        half = 12.706204736174698 * statistics.stdev(diffs) / math.sqrt(2)  # t(0.975, 1 dof)
        assert math.isclose(rows["sgmim"]["ci_high"] - rows["sgmim"]["diff"], half, rel_tol=1e-6,
                            abs_tol=1e-12)
    markdown = (out / "results.md").read_text()
    assert "## delta1" in markdown and "| sgmim |" in markdown
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("metric,row,n,mean,std") and len(csv_lines) == 1 + 3 * 2
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_followed_study_is_cancelled_and_deleted(two_workers, tmp_path):
    """Its jobs ask for a GPU type no worker serves: they stay queued."""
    env, url = two_workers["env"], two_workers["url"]
    nowhere = {"resources": {"gpu_type": "nowhere"}}
    study = write_study(tmp_path, tmp_path / "data", name="stuck", seeds=[0],
                        variants=[{"name": "sgmim", "set": {"method": "sgmim"}}],
                        **{stage: {"file": str(EXAMPLES / f), "set": nowhere} for stage, f in (
                            ("pretrain", "pretrain-tiny.yaml"), ("finetune", "finetune-depth-tiny.yaml"),
                            ("evaluate", "evaluate-depth-tiny.yaml"))})
    follow = popen_cli("study", "run", str(study), "--poll", "0.2", "--out", str(tmp_path / "out"), env=env)
    assert follow.stdout.readline().startswith("study stuck: 1 rows × 1 seeds = 1 cells")
    assert "sgmim-s0: pretrain job" in follow.stdout.readline()  # following it
    follow.send_signal(signal.SIGINT)
    out, err = follow.communicate(timeout=30)
    assert follow.returncode == 130, out + err
    assert "the service keeps advancing study stuck" in out and "sgmim study cancel stuck" in out
    report = status_report("stuck", env)
    job_id = report["sgmim-s0"]["stages"]["pretrain"]["job_id"]
    assert report["sgmim-s0"]["status"] == "queued"

    refused = cli("study", "delete", "stuck", env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "cancel it first" in refused.stderr, refused.stderr
    assert "sgmim study cancel stuck" in refused.stderr

    cancelled = cli("study", "cancel", str(study), env=env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "study stuck cancelled: 0/1 cells done, 1 stopped" in cancelled.stdout
    assert status_report("stuck", env)["sgmim-s0"]["status"] == "cancelled"
    listing = cli("study", "list", env=env)
    assert listing.returncode == 0
    assert next(line for line in listing.stdout.splitlines() if "stuck" in line).split()[4] == "cancelled"

    # running it again resumes nothing: it says so, then writes the table of what finished
    again = cli("study", "run", str(study), "--out", str(tmp_path / "out"), env=env)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "study stuck was cancelled at " in again.stdout, again.stdout
    said = " ".join(again.stdout.split())  # rich wraps the line
    assert "running it again submits and resumes nothing. Resume it with: sgmim study retry stuck" in said
    assert f"cell sgmim-s0: pretrain job {job_id} cancelled" in said
    assert "retry: sgmim study retry stuck" in said
    pretrain = status_report("stuck", env)["sgmim-s0"]["stages"]["pretrain"]
    assert (pretrain["job_id"], pretrain["status"]) == (job_id, "cancelled")

    deleted = cli("study", "delete", "stuck", env=env)
    assert deleted.returncode == 0, deleted.stderr
    assert "stuck" not in [s["name"] for s in httpx.get(f"{url}/api/v1/studies").json()["items"]]
    assert httpx.get(f"{url}/api/v1/jobs/{job_id}").json()["status"] == "cancelled"  # its job stays
    for command in ("status", "cancel", "delete"):
        gone = cli("study", command, "stuck", env=env)
        assert gone.returncode == 2 and gone.stderr == "error: study stuck not found\n", gone.stderr


def test_study_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "pretrain": str(EXAMPLES / "pretrain-tiny.yaml"),
                                   "finetune": str(EXAMPLES / "finetune-depth-tiny.yaml"),
                                   "evaluate": str(EXAMPLES / "evaluate-depth-tiny.yaml"),
                                   "axes": {"method": ["simmim", "mae"]}}))
    done = cli("study", "run", str(bad), "--out", str(tmp_path / "out"), env=clean_env())
    assert done.returncode == 2
    assert "axes" in done.stderr and "'mae' is not one of simmim, sgmim" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_expand(path):
    from sgmim.spec.study import load_study
    from sgmim.study.grid import expand

    study, bases = load_study(path)
    cells = expand(study, bases)
    assert len(cells) == len(study.rows()) * len(study.seeds) >= 2
    assert study.baseline_label() in {cell.row for cell in cells}
