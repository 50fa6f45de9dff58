"""Jobs through the real stack: API (uvicorn) -> broker -> `python -m worker` -> trainer, once
with the embedded broker (filesystem + SQLite) and once with Redis + Postgres."""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from service.broker import Broker
from sgmim.status import TERMINAL
from tests.worker.conftest import (
    JOBS,
    ROOT,
    Stack,
    group_pids,
    job_processes,
    tiny_spec,
    trainer_processes,
    wait_for,
)
from worker.procs import is_gone

pytestmark = pytest.mark.slow


def no_torch_in(pids: list[int]) -> None:
    """The Celery processes never load torch (so never CUDA): no libtorch mapped."""
    assert pids
    for pid in pids:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read()
        assert "libtorch" not in maps, f"worker process {pid} has torch loaded"


def test_job_succeeds_and_a_redelivered_message_does_not_start_a_second_run(stack: Stack):
    job_id = stack.submit(tiny_spec(steps=24, name="ok"))
    wait_for(lambda: trainer_processes(job_id), 60, "the trainer to start")
    assert stack.job(job_id)["status"] == "running"

    # the same message again, as Redis delivers it after the visibility timeout; the worker's
    # second pool process takes it while the first one supervises the run
    broker = Broker(stack.settings)
    broker.enqueue(job_id, stack.settings.default_queue, 5)
    broker.close()
    wait_for(
        lambda: f"job {job_id}: not claimed (it is running)" in stack.worker.text(),
        30,
        "the second delivery to fail its claim",
    )
    assert len(trainer_processes(job_id)) == 1, "one run, one trainer process"
    job = stack.wait_status(job_id, ("succeeded", "failed"), 120)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1 and stack.worker.name in job["worker"]
    assert stack.worker.text().count(f"job {job_id}: claimed by") == 1

    # metrics: every step once, progress complete
    loss = stack.metrics(job_id, "loss")
    assert [m["step"] for m in loss] == list(range(1, 25))
    assert {"loss", "loss_img", "loss_struct", "lr", "images_per_s"} <= {
        m["name"] for m in stack.metrics(job_id)
    }
    assert job["progress"]["step"] == 24 and job["progress"]["total_steps"] == 24

    # checkpoints: the tags on disk (older ones were pruned: keep 2) and the export
    run_dir = stack.run_dir(job_id)
    listed = {c["name"]: c for c in stack.checkpoints(job_id)}
    on_disk = sorted(p.name for p in (run_dir / "checkpoints").glob("global_step*"))
    assert on_disk == ["global_step20", "global_step24"]
    assert sorted(n for n, c in listed.items() if c["kind"] == "deepspeed") == on_disk
    assert listed["global_step24"]["step"] == 24 and listed["global_step24"]["size_bytes"] > 0
    export = run_dir / "export" / "encoder.safetensors"
    assert listed["encoder"]["kind"] == "encoder" and listed["encoder"]["size_bytes"] == export.stat().st_size
    r = stack.client.get(f"{JOBS}/{job_id}/checkpoints/encoder")
    assert r.status_code == 200 and r.content == export.read_bytes()

    # the spec the worker wrote, and the log lines, the supervisor's last one included
    assert json.loads((run_dir / "spec.json").read_text())["name"] == "ok"
    logs = stack.logs(job_id)
    assert any("step 24/24" in line for line in logs)
    assert logs[-1].endswith("[worker] run finished"), logs[-3:]

    assert not job_processes(job_id, run_dir), "no process of the run is left"
    no_torch_in(group_pids(stack.worker.proc.pid))


def cancel_and_check(stack: Stack, job_id: str) -> dict:
    started = time.monotonic()
    r = stack.client.post(f"{JOBS}/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling"
    job = stack.wait_status(job_id, ("cancelled", "succeeded", "failed"), 10)
    elapsed = time.monotonic() - started
    assert job["status"] == "cancelled" and elapsed < 10, (job["status"], elapsed)
    assert not job_processes(job_id, stack.run_dir(job_id)), "a process of the run survived the cancel"
    return job


def test_cancel_mid_run_stops_every_process_within_10_s_and_resume_continues(stack: Stack):
    job_id = stack.submit(tiny_spec(steps=400, name="cancel-me"))
    run_dir = stack.run_dir(job_id)
    wait_for(
        lambda: any(c["kind"] == "deepspeed" for c in stack.checkpoints(job_id)), 90, "a recorded checkpoint"
    )
    assert trainer_processes(job_id)
    job = cancel_and_check(stack, job_id)
    assert job["progress"]["step"] < 400 and job["attempt"] == 1
    assert any("cancel requested" in line for line in stack.logs(job_id))

    # resume: queued again, a worker claims it, and the trainer continues from the checkpoint
    r = stack.client.post(f"{JOBS}/{job_id}/resume")
    assert r.status_code == 202 and r.json()["status"] == "queued"
    info = run_dir / "run_info.json"
    wait_for(
        lambda: json.loads(info.read_text()).get("start_step", 0) >= 4,
        60,
        "the second attempt to resume from the checkpoint",
    )
    job = stack.job(job_id)
    assert job["status"] == "running" and job["attempt"] == 2
    assert len(trainer_processes(job_id)) == 1
    cancel_and_check(stack, job_id)


def test_trainer_crash_fails_the_job_with_a_readable_error(stack: Stack, tmp_path):
    empty = tmp_path / "no-images"
    empty.mkdir()
    spec = tiny_spec(name="crash", data={"source": "image_folder", "root": str(empty), "num_images": None})
    job_id = stack.submit(spec)
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 90)
    assert job["status"] == "failed"
    assert job["error"].startswith("trainer exited with code 2 (bad spec or input)"), job["error"]
    assert "no image folder for split 'train'" in job["error"] and str(empty) in job["error"]
    assert job["attempt"] == 1, "a trainer failure is not retried"
    assert not job_processes(job_id, stack.run_dir(job_id))


def test_worker_killed_mid_run_then_a_new_worker_resumes_from_the_checkpoint(stack: Stack):
    steps = 16  # the kill comes at the first checkpoint (step 4), 12 steps before the end
    job_id = stack.submit(tiny_spec(steps=steps, name="survivor", max_restarts=1))
    run_dir = stack.run_dir(job_id)
    latest = run_dir / "checkpoints" / "latest"
    wait_for(latest.exists, 120, "the first checkpoint", interval=0.02)
    old = stack.worker
    old.kill9()  # the worker and its pool children, like a box dying
    wait_for(lambda: not job_processes(job_id, run_dir), 10, "the trainer to die with its worker")
    assert not (run_dir / "export").exists(), "killed mid-run"
    assert stack.job(job_id)["status"] == "running", "nobody has noticed yet"

    stack.start_worker(f"w2-{stack.name}")
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 150)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 2 and f"w2-{stack.name}@" in job["worker"]

    info = json.loads((run_dir / "run_info.json").read_text())
    start = info["start_step"]
    assert 4 <= start < steps and start % 4 == 0, "attempt 2 resumed from a checkpoint"
    # on disk: attempt 2's metric lines continue from the checkpoint's step
    lines = [
        json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x
    ]
    cut = next((i for i in range(1, len(lines)) if lines[i] <= lines[i - 1]), lines.index(start) + 1)
    assert lines[cut:] == list(range(start + 1, steps + 1))
    # in the database: every step, and the ones before the checkpoint only once (no restart from 0)
    loss_steps = [m["step"] for m in stack.metrics(job_id, "loss")]
    assert set(loss_steps) == set(range(1, steps + 1))
    assert all(loss_steps.count(s) == 1 for s in range(1, start + 1))
    logs = stack.logs(job_id)
    assert any(f"resumed from global_step{start}" in line for line in logs)
    assert "encoder" in {c["name"] for c in stack.checkpoints(job_id)}
    assert not job_processes(job_id, run_dir)


def test_two_nodes_on_one_box(stack: Stack):
    if stack.name != "embedded":
        pytest.skip("the multi-node launch does not depend on the broker: run once")
    job_id = stack.submit(tiny_spec(steps=8, name="two-nodes", resources={"gpus": 1, "nodes": 2}))
    job = stack.wait_status(job_id, ("succeeded", "failed", "cancelled"), 120)
    assert job["status"] == "succeeded", job["error"]
    run_dir = stack.run_dir(job_id)
    assert json.loads((run_dir / "run_info.json").read_text())["world_size"] == 2
    logs = stack.logs(job_id)
    for rank in (0, 1):
        assert any(
            f"node {rank} (local):" in line and f"--node_rank={rank}" in line and "--nnodes=2" in line
            for line in logs
        )
        assert any(f"[rank {rank}] INFO done" in line for line in logs)
    assert [m["step"] for m in stack.metrics(job_id, "loss")] == list(range(1, 9))
    assert not job_processes(job_id, run_dir)


def test_lineage_pretrain_finetune_evaluate(stack: Stack):
    """init: parent resolves to the parent's artifact; a fine-tuning job records its `model`
    export and its evaluation, and an evaluate job's parent is that fine-tuning job."""
    if stack.name != "embedded":
        pytest.skip("parent resolution does not depend on the broker: run once")
    pre = stack.submit(tiny_spec(steps=4, name="parent"))
    assert stack.wait_status(pre, TERMINAL, 120)["status"] == "succeeded"

    ft = yaml.safe_load((ROOT / "examples" / "jobs" / "finetune-depth-tiny.yaml").read_text())
    ft["parent"] = {"job_id": pre}
    ft["config"]["data"]["num_images"] = 16
    ft["config"]["schedule"] = {"batch_size": 8, "steps": 2, "log_every": 1}
    ft["config"]["eval"]["batch_size"] = 8
    fine = stack.submit(ft)
    job = stack.wait_status(fine, TERMINAL, 180)
    assert job["status"] == "succeeded", job["error"]
    spec = json.loads((stack.run_dir(fine) / "spec.json").read_text())
    assert spec["config"]["init_path"] == str(stack.run_dir(pre) / "export" / "encoder.safetensors")
    listed = {c["name"]: c for c in stack.checkpoints(fine)}
    model = stack.run_dir(fine) / "export" / "model.safetensors"
    assert listed["model"]["kind"] == "model" and listed["model"]["size_bytes"] == model.stat().st_size
    assert stack.client.get(f"{JOBS}/{fine}/checkpoints/model").content == model.read_bytes()
    evaluation = stack.client.get(f"{JOBS}/{fine}/evaluation").json()
    assert evaluation == json.loads((stack.run_dir(fine) / "eval.json").read_text())

    ev = yaml.safe_load((ROOT / "examples" / "jobs" / "evaluate-depth-tiny.yaml").read_text())
    ev["parent"] = {"job_id": fine}
    ev["config"]["eval"]["batch_size"] = 8
    evaluate = stack.submit(ev)
    job = stack.wait_status(evaluate, TERMINAL, 120)
    assert job["status"] == "succeeded", job["error"]
    spec = json.loads((stack.run_dir(evaluate) / "spec.json").read_text())
    assert spec["config"]["init_path"] == str(model)
    r = stack.client.get(f"{JOBS}/{evaluate}/evaluation")
    assert r.status_code == 200 and r.json()["metrics"].keys() == evaluation["metrics"].keys()
    progress = job["progress"]   # the evaluation's batches, as a training run's steps
    assert progress["total_steps"] >= 1 and progress["step"] == progress["total_steps"]
    assert job["last_metrics"]["images_evaluated"] == r.json()["num_images"]


def _pool_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def test_sigterm_stops_an_idle_worker_at_once_and_unregisters_it(stack: Stack):
    worker = stack.worker
    assert worker.proc.poll() is None
    registered = wait_for(
        lambda: [w.name for w in stack.repo.workers() if w.name.startswith(worker.name + "@")],
        20,
        "the worker's registry row",
    )
    pool = _pool_children(worker.proc.pid)
    assert pool, "the prefork pool's children"

    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(30) == 0
    # Celery's own warm shutdown would have waited out its polling loops instead
    assert "no job running: stopped at once" in worker.text()
    assert registered[0] not in {w.name for w in stack.repo.workers()}
    wait_for(lambda: all(is_gone(child) for child in pool), 10, "the pool children to die with it")


def test_sigterm_lets_the_running_job_finish(stack: Stack):
    if stack.name != "embedded":
        pytest.skip("the broker plays no part in it: one stack is enough")
    worker = stack.start_worker(f"w3-{stack.name}")
    job_id = stack.submit(tiny_spec(steps=12, name="finish-me"))
    stack.wait_status(job_id, "running", 60)
    worker.proc.send_signal(signal.SIGTERM)

    job = stack.wait_status(job_id, TERMINAL, 150)
    assert job["status"] == "succeeded", job["error"]
    assert job["attempt"] == 1, "the run was not cut short and resumed"
    assert worker.proc.wait(60) == 0
    assert "stopped at once" not in worker.text()
