"""`sgmim demo`: the whole story on the embedded defaults, in a few minutes on 2 CPU cores.

Starts the API and a worker (SQLite, filesystem broker), renders a small synthetic RGB-D set,
pretrains SG-MIM and SimMIM, fine-tunes each for depth from its parent, evaluates both (a study of
two rows and one seed, posted to the service, which runs it), prints the comparison and writes the
loss curves, then stops what it started (with --keep-serving it keeps the API, its web dashboard
and the worker up until Ctrl-C, to look at the runs).
"""

from __future__ import annotations

import json
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_until_interrupted(services: subprocess.Popen, url: str) -> None:
    """Keep the services up until Ctrl-C (or SIGTERM, or until they exit by themselves)."""
    console.print(f"the API, the dashboard ({url}/) and the worker keep serving; Ctrl-C stops them")
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        while services.poll() is None:
            time.sleep(0.5)
        console.print(f"the service exited with code {services.returncode}")
    except KeyboardInterrupt:
        console.print("stopping the API and the worker")
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(size_name: str, workdir: Path | None, keep_serving: bool = False) -> None:
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
        console.print(f"dashboard: [bold]{url}/[/bold] (the jobs below, live)")
        render_data(data_dir, size)
        results = run_jobs(Api(url, None, timeout=60), data_dir, size, workdir)
        print_summary(results, url, workdir, keep_serving)
        if keep_serving:
            serve_until_interrupted(services, url)
    finally:
        stop_services(services)


def demo_study(data_dir: Path, size: DemoSize):
    """SG-MIM vs SimMIM, one seed: the tiny example jobs on the rendered folders."""
    from sgmim.spec import apply_overrides, read_spec_data
    from sgmim.spec.study import StudySpec, Variant

    pretrain = ["config.data.source=image_folder", f"config.data.root={data_dir / 'train'}",
                f"config.data.num_images={size.train_images}",
                f"config.schedule.epochs={size.pretrain_epochs}", "config.schedule.checkpoint_every=null"]
    # num_images=null: the whole rendered folder (the example's 128 would cap a bigger demo)
    finetune = ["config.data.dataset=folder", f"config.data.root={data_dir}", "config.data.num_images=null",
                "config.data.train_split=train", "config.data.val_split=val",
                f"config.schedule.epochs={size.finetune_epochs}"]
    # an evaluate job reads the fine-tuning job's data section from the model it evaluates
    bases = {"pretrain": apply_overrides(read_spec_data(EXAMPLES / "pretrain-tiny.yaml"), pretrain),
             "finetune": apply_overrides(read_spec_data(EXAMPLES / "finetune-depth-tiny.yaml"), finetune),
             "evaluate": apply_overrides(read_spec_data(EXAMPLES / "evaluate-depth-tiny.yaml"),
                                         ["config.split=val"])}
    study = StudySpec(name="demo", **bases, seeds=[0], baseline="SimMIM",
                      variants=[Variant(name="SG-MIM", set={"method": "sgmim"}),
                                Variant(name="SimMIM", set={"method": "simmim"})])
    return study, bases


def run_jobs(api: Api, data_dir: Path, size: DemoSize, workdir: Path) -> dict:
    """The comparison as a study the service runs: pretrain → fine-tune → evaluate per method."""
    from sgmim.spec.study import inline_study
    from sgmim.study.collect import done, follow, write_results

    study, bases = demo_study(data_dir, size)
    api.post("/studies", inline_study(study, bases))
    settled = follow(api, study.name, 1.0, echo=console.print)
    for cell in settled["cells"]:
        if not done(cell):
            job = cell["stages"][cell["stage"]]["job_id"]
            fail(f"{cell['id']}: {cell['stage']} job {job} {cell['status']}; see `sgmim logs {job}`")
    out = workdir / "study"
    write_results(api, settled, out)
    metrics, pretrains = {}, {}
    for cell in settled["cells"]:
        metrics[cell["row"]] = json.loads((out / "cells" / cell["id"] / "eval.json").read_text())
        pretrains[cell["row"]] = cell["stages"]["pretrain"]["job_id"]
    curves = {f"{m} ({job_id})": fetch_series(api, job_id, ["loss_img", "loss_struct", "lr"])
              for m, job_id in pretrains.items()}
    render(curves, workdir / "pretrain-losses.png")
    return {"metrics": metrics, "pretrain": pretrains, "study": out}


def print_summary(results: dict, url: str, workdir: Path, keep_serving: bool = False) -> None:
    table = Table(title="depth on the synthetic validation split (after tiny pretraining + fine-tuning)")
    for column in ("method", "pretrain job", "RMSE (m) ↓", "abs_rel ↓", "δ1 ↑", "images"):
        table.add_column(column)
    for method, evaluation in results["metrics"].items():
        m = evaluation["metrics"]
        table.add_row(method, results["pretrain"][method], _fmt(m.get("rmse")),
                      _fmt(m.get("abs_rel")), _fmt(m.get("delta1")), str(evaluation.get("num_images")))
    console.print(table)
    console.print(f"loss curves: {workdir / 'pretrain-losses.png'}")
    console.print(f"study results (tables, evaluations): {results['study']}")
    console.print(f"artifacts (run dirs, database, logs): {workdir / 'state'}")
    if not keep_serving:
        console.print(f"the API and its dashboard ran at {url}/ (stopped now); to look at these runs, "
                      f"run the demo with --keep-serving, or SGMIM_DATA_DIR={workdir / 'state'} "
                      "sgmim serve --with-worker")


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
