"""`sgmim demo`: the whole story on the embedded defaults, in a few minutes on 2 CPU cores.

Starts the API and a worker (SQLite, filesystem broker), renders a small synthetic RGB-D set,
pretrains SG-MIM and SimMIM, fine-tunes each for depth from its parent, evaluates both, prints
the comparison and writes the loss curves, then stops what it started.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from sgmim.cli.client import Api, fail
from sgmim.cli.jobs import follow
from sgmim.cli.plot import fetch_series, render

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "jobs"
console = Console()


@dataclass(frozen=True)
class DemoSize:
    train_images: int
    val_images: int
    pretrain_epochs: int
    finetune_epochs: int


SIZES = {
    # small (CI): 12 pretraining and 24 fine-tuning steps; default: 80 and 128
    "small": DemoSize(train_images=64, val_images=16, pretrain_epochs=6, finetune_epochs=6),
    "default": DemoSize(train_images=256, val_images=64, pretrain_epochs=10, finetune_epochs=8),
}


def free_port() -> int:
    from sgmim.train.launch import free_port as pick

    return pick()


def start_services(state_dir: Path, port: int, data_dir: Path) -> subprocess.Popen:
    """`python -m service --with-worker` on loopback, in its own process group; the demo's data
    folder is its data root."""
    env = {**os.environ, "SGMIM_DATA_DIR": str(state_dir), "SGMIM_HOST": "127.0.0.1",
           "SGMIM_DATA_ROOTS": str(data_dir)}
    for key in ("SGMIM_DATABASE_URL", "SGMIM_BROKER_URL", "SGMIM_ARTIFACT_ROOT", "SGMIM_API_TOKENS"):
        env.pop(key, None)  # the demo is the embedded default, whatever the shell has set
    log = (state_dir / "services.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "service", "--port", str(port), "--with-worker"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, services: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if services.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            fail(f"the service exited with code {services.returncode}:\n{tail}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    fail(f"the service did not become ready within {timeout:.0f} s; see {log}")


def stop_services(services: subprocess.Popen) -> None:
    if services.poll() is not None:
        return
    os.killpg(services.pid, signal.SIGTERM)
    try:
        services.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(services.pid, signal.SIGKILL)
        services.wait()


def render_data(data_dir: Path, size: DemoSize) -> None:
    from sgmim.data.synthetic.export import write_synthetic_dataset

    for split, count in (("train", size.train_images), ("val", size.val_images)):
        with console.status(f"rendering {count} synthetic RGB-D scenes ({split})"):
            write_synthetic_dataset(data_dir / split, count, (64, 64), split)
    console.print(f"synthetic RGB-D scenes in {data_dir} (images/, depth/, gt_depth/, labels/)")


def submit(api: Api, example: str, overrides: list[str], parent: str | None = None) -> dict:
    from sgmim.spec import apply_overrides, read_spec_data

    body = apply_overrides(read_spec_data(EXAMPLES / example), overrides)
    if parent:
        body["parent"] = {"job_id": parent}
    job = api.post("/jobs", body)
    console.print(f"submitted {job['kind']} job [bold]{job['id']}[/bold] {job['name']!r}")
    return job


def run_to_end(api: Api, job: dict) -> None:
    if follow(api, job["id"]) != 0:
        fail(f"job {job['id']} ({job['name']}) did not succeed; see `sgmim logs {job['id']}`")


def run_demo(size_name: str, workdir: Path | None) -> None:
    size = SIZES[size_name]
    workdir = (workdir or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    state_dir, data_dir = workdir / "state", workdir / "data"
    state_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    console.rule("SG-MIM demo")
    console.print(f"starting the API and a worker on the embedded defaults at {url}")
    services = start_services(state_dir, port, data_dir)
    try:
        wait_ready(url, services, state_dir / "services.log")
        render_data(data_dir, size)
        results = run_jobs(Api(url, None, timeout=60), data_dir, size, workdir)
    finally:
        stop_services(services)
    print_summary(results, url, workdir)


def run_jobs(api: Api, data_dir: Path, size: DemoSize, workdir: Path) -> dict:
    data = ["config.data.source=image_folder", f"config.data.root={data_dir / 'train'}",
            f"config.data.num_images={size.train_images}",
            f"config.schedule.epochs={size.pretrain_epochs}",
            "config.schedule.checkpoint_every=null"]
    methods = {"SG-MIM": submit(api, "pretrain-tiny.yaml", [*data, "name=demo-sgmim"]),
               "SimMIM": submit(api, "pretrain-tiny-simmim.yaml", [*data, "name=demo-simmim"])}
    for job in methods.values():
        run_to_end(api, job)
    downstream = ["config.data.dataset=folder", f"config.data.root={data_dir}",
                  "config.data.train_split=train", "config.data.val_split=val"]
    finetunes = {}
    for method, job in methods.items():
        finetunes[method] = submit(api, "finetune-depth-tiny.yaml",
                                   [*downstream, f"config.schedule.epochs={size.finetune_epochs}",
                                    f"name=demo-{method.lower()}-depth"], parent=job["id"])
    for job in finetunes.values():
        run_to_end(api, job)
    # an evaluate job reads the fine-tuning job's data section from the model it evaluates
    evaluations = {method: submit(api, "evaluate-depth-tiny.yaml",
                                  ["config.split=val", f"name=demo-{method.lower()}-eval"],
                                  parent=job["id"]) for method, job in finetunes.items()}
    for job in evaluations.values():
        run_to_end(api, job)
    results = {method: api.get(f"/jobs/{job['id']}/evaluation") for method, job in evaluations.items()}
    curves = {f"{m} ({j['id']})": fetch_series(api, j["id"], ["loss_img", "loss_struct", "lr"])
              for m, j in methods.items()}
    render(curves, workdir / "pretrain-losses.png")
    return {"metrics": results, "jobs": {"pretrain": methods, "finetune": finetunes,
                                         "evaluate": evaluations}}


def print_summary(results: dict, url: str, workdir: Path) -> None:
    table = Table(title="depth on the synthetic validation split (after tiny pretraining + fine-tuning)")
    for column in ("method", "pretrain job", "RMSE (m) ↓", "abs_rel ↓", "δ1 ↑", "images"):
        table.add_column(column)
    for method, evaluation in results["metrics"].items():
        m = evaluation["metrics"]
        table.add_row(method, results["jobs"]["pretrain"][method]["id"], _fmt(m.get("rmse")),
                      _fmt(m.get("abs_rel")), _fmt(m.get("delta1")), str(evaluation.get("num_images")))
    console.print(table)
    console.print(f"loss curves: {workdir / 'pretrain-losses.png'}")
    console.print(f"artifacts (run dirs, database, logs): {workdir / 'state'}")
    console.print(f"the API ran at {url} (stopped now); to keep one running: sgmim serve --with-worker")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
