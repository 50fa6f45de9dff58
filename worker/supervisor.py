"""The job supervisor: one per running attempt, in the Celery task (Ray's job supervisor and
Determined's trial runner are the models).

    outcome = Supervisor(repo, settings, job_id, attempt, worker_name).run()

It owns the attempt's processes from launch to exit and keeps the database true meanwhile:

1. Run directory `settings.run_dir(job_id)`; `spec.json` = the job's validated spec with
   `config.init_path` filled in for `init: parent` (fine-tuning: the parent pretraining job's
   `export/encoder.safetensors`, or the parent checkpoint named by `parent.checkpoint`;
   evaluation: the parent fine-tuning job's `export/model.safetensors`). A missing parent
   artifact, a box with fewer GPUs than asked, or a multi-node job that cannot be placed fails
   the job with the reason before anything starts. (The trainer renders `ds_config.json`
   itself: the config depends on the device and world size it finds.)
2. Launch: `sgmim.train.launch.command/environment` per node (`worker.multinode`), each launcher
   `Popen(start_new_session=True, preexec_fn=die_with_parent)` with stdout+stderr appended to
   `train.log`, env `SGMIM_JOB_ID`, `SGMIM_ATTEMPT`, `SGMIM_LOG_TO_STDOUT=0`,
   `PYTHONUNBUFFERED=1`, and without the service's own settings (database URL, tokens). This
   process never imports torch, so it never initialises CUDA.
3. Monitor, every `TICK_S`: tail `metrics.jsonl` and `train.log` (byte offsets, whole lines) into
   `append_metrics` / `append_logs`; poll for a cancel every `CANCEL_POLL_S`; heartbeat every
   `settings.heartbeat_interval_s` with progress {step, total_steps, epoch}; record checkpoint
   tags once complete and forget the ones the trainer pruned. The offsets are saved in
   `.worker-state.json` after each batch is committed, so the next attempt (after a lost worker
   or a resume) continues where this one's last committed batch ended: at least once, never
   re-reading the whole file.
4. Cancel (`cancelling`): SIGTERM to every launcher's process group, `settings.cancel_grace_s`,
   SIGKILL, then a sweep of the process table for anything of the attempt; `cancelled`.
   Lost ownership (heartbeat answers None: the reaper requeued the job): stop the run the
   same way and return without writing to the job.
5. Exit: final tail flush (the supervisor's own last lines included) BEFORE the terminal
   status, since a live SSE stream closes on it; exit 0 records the export(s) and `eval.json`
   and ends `succeeded`; a launcher killed by a signal (the OOM killer, a node's SIGKILL) is
   treated like a lost worker: the job is queued again while `max_restarts` allows (the
   reaper sends it), else `failed`, the error naming the signal; anything else ends `failed`
   with "trainer exited with code N (meaning)" and the last lines of `train.log`.
6. An outcome is written to `.worker-outcome.json` before it is recorded and removed once it
   is; when recording fails for good (the database is gone), the reaper requeues the job and
   the next attempt records that outcome instead of running the job again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from service.db.errors import InvalidTransition, JobNotFound
from service.db.repo import JobRepo
from service.settings import Settings
from sgmim import rundir
from sgmim.rundir import exit_meaning
from sgmim.spec import AnyJob, SpecError, parse_spec
from sgmim.spec.paths import paths_outside
from sgmim.status import JobStatus
from sgmim.train.launch import die_with_parent, environment, gpu_count
from worker import procs
from worker.multinode import NodeLaunch, PlanError, local_threads, plan_nodes, read_hostfile
from worker.runfiles import (
    LineTail,
    last_lines,
    metric_points,
    read_json,
    scan_checkpoints,
    tree_size,
    write_json_atomic,
)

log = logging.getLogger("worker.supervisor")

T = TypeVar("T")

TICK_S = 0.5
CANCEL_POLL_S = 1.0
CHECKPOINT_POLL_S = 2.0
BATCH = 2000  # rows per append
ERROR_LOG_LINES = 20
RECORD_RETRY_DELAYS = (0.5, 1, 2, 4, 8)  # seconds between tries to record an outcome
EXPORTS = (  # (checkpoint name, kind, path in the run dir)
    ("encoder", "encoder", rundir.ENCODER_EXPORT),  # pretraining
    ("model", "model", rundir.MODEL_EXPORT),  # fine-tuning: encoder + head
)
PARENT_ARTIFACT = {
    "finetune": (rundir.ENCODER_EXPORT, "exported encoder"),
    "evaluate": (rundir.MODEL_EXPORT, "exported model"),
}


class LaunchError(Exception):
    """The attempt cannot start; the message becomes the job's error."""


class _DbFailed:
    """A database call that raised (logged); the run goes on."""


DB_FAILED = _DbFailed()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"trainer was killed by {name}"
    return f"trainer exited with code {code} ({exit_meaning(code)})"


def service_setting_names() -> frozenset[str]:
    """Environment names of the service's settings: not the trainer's business (the database
    URL and API tokens stay in the worker)."""
    return frozenset("SGMIM_" + name.upper() for name in Settings.model_fields)


class Supervisor:
    def __init__(
        self,
        repo: JobRepo,
        settings: Settings,
        job_id: str,
        attempt: int,
        worker_name: str = "worker",
    ):
        self.repo, self.settings = repo, settings
        self.job_id, self.attempt, self.worker_name = job_id, attempt, worker_name
        self.run_dir = settings.run_dir(job_id)
        self.log_path = self.run_dir / rundir.TRAIN_LOG
        self.state_path = self.run_dir / rundir.WORKER_STATE
        self.log_tag = ""  # prefix of this supervisor's log lines in the database (gang nodes)
        self.tail_metrics = True  # only the job's owner moves metrics (rank 0 writes them)
        self.gang_node: int | None = None  # the node rank of a multi-node job placed on workers
        self.procs: list[subprocess.Popen] = []
        self.nodes: list[NodeLaunch] = []
        self.step: int | None = None
        self.epoch: float | None = None
        self.total_steps: int | None = None
        self.recorded: set[str] = set()  # deepspeed tags in the database
        self._db_errors = 0

    # --- entry ---------------------------------------------------------------------------------

    def run(self) -> str:
        """Run the attempt to its end. Returns "succeeded", "failed", "cancelled", or "lost"
        (this attempt no longer owns the job). Never raises."""
        try:
            return self._run()
        except Exception as exc:
            log.exception("job %s attempt %d: supervisor error", self.job_id, self.attempt)
            with contextlib.suppress(Exception):
                self._stop()
            with contextlib.suppress(Exception):
                self._log_line(f"worker error: {type(exc).__name__}: {exc}")
                self._pump(final=True)
            return self._finish(JobStatus.FAILED, f"worker error: {type(exc).__name__}: {exc}")

    def _run(self) -> str:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = read_json(self.state_path) or {}
        self.metrics_tail = LineTail(self.run_dir / rundir.METRICS, int(state.get("metrics_offset", 0)))
        self.log_tail = LineTail(self.log_path, int(state.get("log_offset", 0)))
        pending = read_json(self.run_dir / rundir.PENDING_OUTCOME)
        if isinstance(pending, dict) and self._is_pending(pending):
            return self._record_pending(pending)
        (self.run_dir / rundir.PENDING_OUTCOME).unlink(missing_ok=True)
        self.recorded = {c.name for c in self.repo.checkpoints(self.job_id) if c.kind == "deepspeed"}
        try:
            job = self.repo.get(self.job_id)
            spec = self.resolve_spec(job.spec)
            spec_path = self.run_dir / rundir.SPEC
            write_json_atomic(spec_path, spec.model_dump(mode="json"))
            self.nodes = self.plan(spec, spec_path)
        except (LaunchError, PlanError) as exc:
            self._log_line(f"attempt {self.attempt} on {self.worker_name} cannot start: {exc}")
            self._pump(final=True)
            return self._finish(JobStatus.FAILED, str(exc))
        self._launch(spec)
        return self._monitor()

    # --- preparation ---------------------------------------------------------------------------

    def resolve_spec(self, stored: dict[str, Any]) -> AnyJob:
        """The stored spec, validated once in this process (the schema may have changed since
        the submit), with config.init_path filled in for init: parent."""
        try:
            spec = parse_spec(copy.deepcopy(stored))
        except SpecError as exc:
            raise LaunchError(f"the stored job spec no longer validates: {exc}") from None
        outside = paths_outside(spec, self.settings.allowed_data_roots(), resolve=True)
        if outside:
            raise LaunchError("; ".join(f"{field}: {message}" for field, message in outside))
        if spec.kind in PARENT_ARTIFACT and spec.config.init == "parent":
            config = spec.config.model_copy(update={"init_path": str(self.parent_artifact(spec))})
            spec = spec.model_copy(update={"config": config})
        return spec

    def parent_artifact(self, spec: AnyJob) -> Path:
        parent = spec.parent
        if parent is None:  # the schema requires one with init: parent
            raise LaunchError("config.init is parent but the job has no parent")
        parent_dir = self.settings.run_dir(parent.job_id)
        if parent.checkpoint:
            try:
                row = self.repo.checkpoint(parent.job_id, parent.checkpoint)
            except JobNotFound:
                raise LaunchError(f"parent job {parent.job_id} does not exist") from None
            if row is None:
                raise LaunchError(f"parent job {parent.job_id} has no checkpoint named {parent.checkpoint!r}")
            path, what = parent_dir / row.path, f"checkpoint {parent.checkpoint!r}"
        else:
            rel, what = PARENT_ARTIFACT[spec.kind]
            path = parent_dir / rel
        if not path.exists():
            raise LaunchError(f"the {what} of parent job {parent.job_id} is missing: {path} does not exist")
        return path

    def plan(self, spec: AnyJob, spec_path: Path) -> list[NodeLaunch]:
        gpus, nodes = spec.resources.gpus, spec.resources.nodes
        have = gpu_count()
        if have and have < gpus:
            raise LaunchError(
                f"the job asks for resources.gpus={gpus} per node, but this box has {have} GPU(s)"
            )
        hostfile = None
        if nodes > 1 and self.settings.hostfile is not None:
            hostfile = read_hostfile(self.settings.hostfile)
        return plan_nodes(
            nodes=nodes,
            gpus=gpus,
            spec_path=spec_path,
            run_dir=self.run_dir,
            hostfile=hostfile,
            node_addr=self.settings.node_addr,
            master_port=self.settings.master_port,
        )

    def base_environment(self) -> dict[str, str]:
        hidden = service_setting_names()
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        env.update(
            {rundir.ENV_JOB_ID: self.job_id, rundir.ENV_ATTEMPT: str(self.attempt),
             rundir.ENV_LOG_TO_STDOUT: "0"},
            PYTHONUNBUFFERED="1",
        )
        if self.gang_node is not None:
            env[procs.ENV_GANG_NODE] = str(self.gang_node)
        local_nodes = sum(node.local for node in self.nodes)
        if local_nodes > 1 and gpu_count() == 0:
            env = local_threads(env, local_nodes * self.nodes[0].launch.nproc_per_node)
        return env

    def _launch(self, spec: AnyJob) -> None:
        base = self.base_environment()
        cwd = os.getcwd()
        self._log_line(
            f"attempt {self.attempt} on {self.worker_name}: {spec.kind} job, "
            f"{spec.resources.nodes} node(s) × {spec.resources.gpus} process(es)"
        )
        with self.log_path.open("ab") as out:
            for node in self.nodes:
                env = environment(node.launch, base)
                argv = node.start_argv(self.settings.ssh_command, env, cwd)
                where = "local" if node.local else f"via ssh on {node.host}"
                self._log_line(f"node {node.node_rank} ({where}): {shlex.join(argv)}")
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=cwd,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        preexec_fn=die_with_parent,
                    )
                )
        log.info(
            "job %s attempt %d: launched %s",
            self.job_id,
            self.attempt,
            ", ".join(f"node {n.node_rank} pid {p.pid}" for n, p in zip(self.nodes, self.procs, strict=True)),
        )

    # --- monitoring ------------------------------------------------------------------------------

    def _monitor(self) -> str:
        settings = self.settings
        now = time.monotonic()
        next_heartbeat = now + settings.heartbeat_interval_s
        next_cancel_check = now + CANCEL_POLL_S
        next_checkpoints = now
        node0_done_at: float | None = None
        while True:
            codes = [p.poll() for p in self.procs]
            self._pump()
            now = time.monotonic()
            if now >= next_checkpoints:
                next_checkpoints = now + CHECKPOINT_POLL_S
                self._db(self.sync_checkpoints)
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                return self._exited()
            if codes[0] == 0:  # node 0 is done; the others should follow at once
                node0_done_at = node0_done_at or now
                if now - node0_done_at > max(settings.cancel_grace_s, 10.0):
                    self._log_line("node 0 finished but other nodes did not exit: stopping them")
                    return self._exited(node0_finished=True)
            if now >= next_cancel_check:
                next_cancel_check = now + CANCEL_POLL_S
                if self._db(self.repo.is_cancel_requested, self.job_id) is True:
                    return self._cancel()
                outcome = self._attempt_check()
                if outcome is not None:
                    return outcome
            if now >= next_heartbeat:
                next_heartbeat = now + settings.heartbeat_interval_s
                status = self._db(self.repo.heartbeat, self.job_id, self.attempt, self.progress())
                if status is None:
                    return self._lost()
                if status == JobStatus.CANCELLING:
                    return self._cancel()
            time.sleep(TICK_S)

    def _attempt_check(self) -> str | None:
        """An outcome when the attempt must end for a reason outside this box (a gang's node
        failed or vanished); None: go on."""
        return None

    def progress(self) -> dict[str, Any]:
        return {"step": self.step, "total_steps": self.total_steps, "epoch": self.epoch}

    def _pump(self, final: bool = False) -> None:
        """Move new metric and log lines into the database (everything, when final)."""
        while True:
            moved = self._pump_metrics(final) + self._pump_logs(final)
            if moved:
                self._save_state()
            if not final or not moved:
                break
        if self.total_steps is None:
            info = read_json(self.run_dir / rundir.RUN_INFO)
            if isinstance(info, dict) and isinstance(info.get("total_steps"), int):
                self.total_steps = info["total_steps"]

    def _pump_metrics(self, final: bool) -> int:
        if not self.tail_metrics:
            return 0
        before = self.metrics_tail.offset
        lines = self.metrics_tail.read(final=final)
        if not lines:
            return 0
        points = [p for line in lines if line.strip() for p in metric_points(line)]
        try:
            for i in range(0, len(points), BATCH):
                self.repo.append_metrics(self.job_id, points[i : i + BATCH])
        except Exception:
            self.metrics_tail.offset = before  # again next time
            self._db_error("append_metrics")
            return 0
        for p in points:
            if p["step"] is not None and (self.step is None or p["step"] >= self.step):
                self.step = p["step"]
                self.epoch = p["epoch"] if p["epoch"] is not None else self.epoch
        return len(lines)

    def _pump_logs(self, final: bool) -> int:
        before = self.log_tail.offset
        lines = self.log_tail.read(final=final)
        if not lines:
            return 0
        text = [self.log_tag + line.decode("utf-8", "replace").rstrip("\r") for line in lines]
        try:
            for i in range(0, len(text), BATCH):
                self.repo.append_logs(self.job_id, text[i : i + BATCH])
        except Exception:
            self.log_tail.offset = before
            self._db_error("append_logs")
            return 0
        return len(lines)

    def _save_state(self) -> None:
        with contextlib.suppress(OSError):
            write_json_atomic(
                self.state_path,
                {
                    "metrics_offset": self.metrics_tail.offset,
                    "log_offset": self.log_tail.offset,
                    "attempt": self.attempt,
                },
            )

    def sync_checkpoints(self) -> None:
        """Record complete DeepSpeed tags; forget recorded ones the trainer pruned."""
        scan = scan_checkpoints(self.run_dir / rundir.CHECKPOINTS)
        for name, step in sorted(scan.complete.items(), key=lambda item: item[1]):
            if name not in self.recorded:
                size = tree_size(self.run_dir / rundir.CHECKPOINTS / name)
                self.repo.record_checkpoint(self.job_id, name, "deepspeed", step, size, f"checkpoints/{name}")
                self.recorded.add(name)
        for name in sorted(self.recorded - scan.present):
            self.repo.delete_checkpoint(self.job_id, name)
            self.recorded.discard(name)

    # --- endings -------------------------------------------------------------------------------

    def _stop(self, grace_s: float | None = None, pump: bool = False) -> None:
        """SIGTERM, grace, SIGKILL for every launcher group, then nothing of the attempt lives
        (`pump`: keep moving log lines into the database meanwhile)."""
        grace = self.settings.cancel_grace_s if grace_s is None else grace_s
        procs.stop_groups(self.procs, grace, on_wait=self._pump if pump else None)
        strays = procs.kill_strays(self.job_id, self.attempt, node=self.gang_node)
        if strays:
            log.warning("job %s attempt %d: killed leftover processes %s", self.job_id, self.attempt, strays)

    def _cancel(self) -> str:
        if all(p.poll() is not None for p in self.procs):
            return self._exited()  # it ended on its own as the cancel landed: keep its outcome
        self._log_line(
            f"cancel requested: stopping the run (SIGTERM, SIGKILL after {self.settings.cancel_grace_s:g} s)"
        )
        log.info("job %s attempt %d: cancelling", self.job_id, self.attempt)
        self._stop(pump=True)
        self._log_line("run stopped: cancelled")
        self._pump(final=True)
        self._db(self.sync_checkpoints)
        return self._finish(JobStatus.CANCELLED, None)

    def _lost(self) -> str:
        log.warning(
            "job %s attempt %d: this attempt no longer owns the job (requeued or finished "
            "elsewhere); stopping its processes without touching the job",
            self.job_id,
            self.attempt,
        )
        self._log_line(f"attempt {self.attempt} no longer owns the job: stopping its processes")
        self._stop()
        return "lost"

    def _exited(self, node0_finished: bool = False) -> str:
        """The launchers ended (or node 0 did and the others are stopped): record the outcome."""
        codes = [p.poll() for p in self.procs]
        if any(c is None for c in codes):  # a node failed (or node 0 finished): end the others
            self._stop(min(self.settings.cancel_grace_s, 5.0), pump=True)
            if node0_finished:  # the others were stopped by us after node 0 completed the run
                codes = [0 if c is None else c for c in codes]
            else:
                codes = [p.returncode if c is None else c for p, c in zip(self.procs, codes, strict=True)]
        else:
            strays = procs.kill_strays(self.job_id, self.attempt, node=self.gang_node)
            if strays:
                log.warning(
                    "job %s attempt %d: killed leftover processes %s", self.job_id, self.attempt, strays
                )
        failed = [c for c in codes if c not in (0, None)]
        # node 0's code first: the others usually fail because node 0 went away
        code = codes[0] if codes[0] not in (0, None) else (failed[0] if failed else 0)
        if code == 0 and not failed:
            self._pump(final=True)
            self._db(self.sync_checkpoints)
            self._db(self.record_results)
            self._log_line("run finished")
            self._pump(final=True)
            return self._finish(JobStatus.SUCCEEDED, None)
        tail = last_lines(self.log_path, ERROR_LOG_LINES)
        reason = describe_exit(code)
        self._log_line(reason)
        self._pump(final=True)
        self._db(self.sync_checkpoints)
        error = reason + (":\n" + "\n".join(tail) if tail else "")
        if code < 0:  # killed from outside, not a failure of the run: like a lost worker
            return self._requeue(error)
        return self._finish(JobStatus.FAILED, error)

    def record_results(self) -> None:
        """The export(s) as checkpoints and eval.json as the job's evaluation."""
        step = self.total_steps if self.total_steps is not None else self.step
        for name, kind, rel in EXPORTS:
            path = self.run_dir / rel
            if path.is_file():
                self.repo.record_checkpoint(self.job_id, name, kind, step, path.stat().st_size, rel)
        evaluation = read_json(self.run_dir / rundir.EVAL)
        if isinstance(evaluation, dict):
            self.repo.set_evaluation(self.job_id, evaluation)
        elif (self.run_dir / rundir.EVAL).exists():
            self._log_line("eval.json is not a JSON object: not recorded")

    def _finish(self, status: JobStatus, error: str | None) -> str:
        """Record the outcome; "lost" when this attempt no longer owns the job, "error" when the
        database refused it on every try (the pending outcome file stays for the next attempt)."""

        def record(text: str | None) -> str:
            owned = self.repo.finish_job(self.job_id, self.attempt, status, text, self.progress())
            return status if owned else "lost"

        return self._record(status, error, record)

    def _requeue(self, error: str) -> str:
        """Queue the job again like a lost worker (within max_restarts): "queued", "failed",
        "cancelled" (a cancel was under way), or "lost"."""
        log.warning("job %s attempt %d: %s; queued again if restarts remain", self.job_id, self.attempt,
                    error.splitlines()[0])

        def record(text: str | None) -> str:
            return self.repo.requeue(self.job_id, text or "", attempt=self.attempt) or "lost"

        return self._record(JobStatus.QUEUED, error, record)

    def _record(self, status: JobStatus, error: str | None, record: Callable[[str | None], str]) -> str:
        """Write the outcome to the pending file, then record it (a few tries: a database hiccup
        must not lose it, and a refused text must not hide it: later tries send the text as
        ASCII); the pending file goes once the database has the outcome."""
        pending = self.run_dir / rundir.PENDING_OUTCOME
        with contextlib.suppress(OSError):
            write_json_atomic(pending, {"attempt": self.attempt, "status": str(status), "error": error})
        text = error
        for delay in (*RECORD_RETRY_DELAYS, None):
            try:
                outcome = record(text)
            except (JobNotFound, InvalidTransition) as exc:
                log.warning("job %s attempt %d: cannot record %s: %s", self.job_id, self.attempt, status, exc)
                outcome = "lost"
            except Exception:
                if delay is None:
                    log.exception(
                        "job %s attempt %d: could not record %s; the next attempt records it",
                        self.job_id,
                        self.attempt,
                        status,
                    )
                    return "error"
                log.warning("job %s attempt %d: recording %s failed; retrying", self.job_id, self.attempt,
                            status, exc_info=True)
                text = None if error is None else error.encode("ascii", "backslashreplace").decode("ascii")
                time.sleep(delay)
                continue
            with contextlib.suppress(OSError):
                pending.unlink(missing_ok=True)
            if outcome == "lost":
                log.warning("job %s attempt %d: ended %s, but the attempt no longer owns the job",
                            self.job_id, self.attempt, status)
            else:
                log.info("job %s attempt %d: %s", self.job_id, self.attempt, outcome)
            return outcome
        return "error"

    def _is_pending(self, pending: dict[str, Any]) -> bool:
        attempt, status = pending.get("attempt"), pending.get("status")
        return (
            attempt == self.attempt - 1
            and status in (JobStatus.SUCCEEDED, JobStatus.FAILED)  # a cancel ends without a rerun
        )

    def _record_pending(self, pending: dict[str, Any]) -> str:
        """An earlier attempt ended but could not record how: record that, run nothing."""
        status = JobStatus(pending["status"])
        error = pending.get("error") if isinstance(pending.get("error"), str) else None
        self._log_line(f"attempt {pending['attempt']} ended {status} but could not record it: recorded now")
        self._pump(final=True)
        return self._finish(status, error)

    # --- helpers -------------------------------------------------------------------------------

    def _log_line(self, message: str) -> None:
        """A line of the supervisor's own in train.log (it reaches the database with the rest)."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with contextlib.suppress(OSError), self.log_path.open("ab") as f:
            f.write(f"{stamp} [worker] {message}\n".encode())

    def _db(self, fn: Callable[..., T], *args: Any) -> T | _DbFailed:
        try:
            return fn(*args)
        except Exception:
            self._db_error(getattr(fn, "__name__", "database call"))
            return DB_FAILED

    def _db_error(self, what: str) -> None:
        self._db_errors += 1
        if self._db_errors <= 3 or self._db_errors % 100 == 0:
            log.warning(
                "job %s attempt %d: %s failed (%d so far); the run goes on",
                self.job_id,
                self.attempt,
                what,
                self._db_errors,
                exc_info=True,
            )
