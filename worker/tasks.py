"""The Celery task `sgmim.run_job(job_id)` and the worker-side reaper.

The task claims the job row atomically (`claim_job`: queued -> running with this worker's node
name and the next attempt number). A claim that fails means the job is not queued: another
worker runs it, a redelivered or duplicated message arrived while it runs, or it was cancelled
while queued (so a cancelled queued job never starts). Then the task logs that and returns.
Otherwise the job supervisor runs the attempt to its end inside the task. The task never raises
for a job's failure: the outcome lives in the database.

Acknowledgement, deliberately LATE (`task_acks_late=True` in service/queue.py):
- with prefetch multiplier 1 and concurrency 1, a worker busy with a multi-hour run holds
  exactly one unacked message, the running one; with early ack the freed prefetch slot would
  pull the next job's message into this busy box's buffer while idle boxes wait;
- the price: Redis redelivers an unacked message after `visibility_timeout`. It is set to 7 days
  (settings.broker_visibility_timeout_s), and a redelivered copy, arriving at any worker at any
  time, fails its claim because the job is no longer `queued`: it can never start a second run;
- `task_reject_on_worker_lost=False`: a pool child that dies has its message acked, not
  requeued; a worker killed whole (or the box) loses the message (filesystem and SQLAlchemy
  transports) or leaves it unacked until the visibility timeout (Redis). Recovery of both is
  the reaper's: the job's heartbeat goes stale, it is requeued (attempt < max_restarts) and its
  message sent again, and the next attempt resumes from the run directory's latest checkpoint.

The reaper (`service.reaper.reap_once`) runs in the worker's main process every
`settings.reaper_interval_s`, in a daemon thread started on `worker_ready`, unless the API runs
it (`settings.reaper_in_api`). Several reapers are harmless (each requeue re-checks the row).

Multi-node jobs (`multinode_launcher` workers): the worker registers itself in the database on
`worker_ready` (host, address, GPUs, queues) and heartbeats its row from a daemon thread of the
main process; a placed gang's `sgmim.run_node(job_id, attempt, node_rank)` arrives on the host's
own queue and runs that node (worker/gang.py). Every task frees the worker's row when it ends.
A single-node claim refused because a gang reserved this worker sends the job's message again.

Stopping: SIGTERM or Ctrl-C while a job runs is Celery's warm shutdown (the run goes on to its
end). An idle worker has nothing to finish and stops at once (`_stop_at_once_when_idle`).

Nothing here imports torch (the launcher module and the spec schema are torch-free), so the
worker process never initialises CUDA; the ranks the supervisor starts do.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass

from celery import shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from service.broker import Broker, dispatch
from service.db import open_repo
from service.db.repo import JobRepo
from service.queue import NODE_TASK_NAME, TASK_NAME
from service.settings import Settings
from sgmim.status import JobStatus
from sgmim.train.launch import die_with_parent, gpu_count
from worker.gang import GangSupervisor
from worker.supervisor import Supervisor

log = logging.getLogger("worker.tasks")


@dataclass
class Runtime:
    """Settings and database handle of one process (the Celery parent or a pool child)."""

    settings: Settings
    repo: JobRepo


_runtimes: dict[int, Runtime] = {}
_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime, created on first use (after the fork: pool children never share
    the parent's database connections)."""
    pid = os.getpid()
    with _lock:
        rt = _runtimes.get(pid)
        if rt is None:
            settings = Settings()
            rt = _runtimes[pid] = Runtime(settings, open_repo(settings, migrate=False))
        return rt


@worker_process_init.connect
def _die_with_the_worker(**_kwargs: object) -> None:
    """A pool child never outlives its worker (one killed with -9, or with its server): the run
    it supervises dies with it (the trainer's own PR_SET_PDEATHSIG) and the reaper requeues it."""
    die_with_parent()


@worker_process_init.connect
def _forget_inherited_connections(**_kwargs: object) -> None:
    """In a fresh pool child: drop the parent's pooled connections without closing them (they
    belong to the parent), as SQLAlchemy recommends after fork."""
    with _lock:
        for pid, rt in list(_runtimes.items()):
            if pid != os.getpid():
                rt.repo.db.engine.dispose(close=False)
                del _runtimes[pid]


@shared_task(name=TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def run_job(self, job_id: str) -> str:
    """Claim the job and supervise its attempt to the end. Returns the outcome (for logs)."""
    return execute(job_id, self.request.hostname or f"worker@{socket.gethostname()}")


def execute(job_id: str, worker_name: str) -> str:
    rt = runtime()
    try:
        attempt = rt.repo.claim_job(str(job_id), worker_name)
    except Exception:
        # the message is gone; the job stays queued and the reaper sends it again
        log.exception("job %s: claim failed (database unreachable?); the reaper will resend it", job_id)
        return "claim-error"
    if attempt is None:
        try:
            job = rt.repo.get(str(job_id))
        except Exception:
            job = None
        if job is not None and job.status == JobStatus.QUEUED:
            log.info("job %s: not claimed: a multi-node job reserved this worker; sending it again", job_id)
            _resend(job)
            return "reserved"
        log.info(
            "job %s: not claimed (it is %s): already claimed or cancelled, nothing to do",
            job_id,
            job.status if job is not None else "unknown",
        )
        return "not-claimed"
    log.info("job %s: claimed by %s, attempt %d", job_id, worker_name, attempt)
    try:
        outcome = Supervisor(rt.repo, rt.settings, str(job_id), attempt, worker_name).run()
    finally:
        _release(worker_name, str(job_id))
    log.info("job %s attempt %d: %s", job_id, attempt, outcome)
    return outcome


@shared_task(name=NODE_TASK_NAME, bind=True, acks_late=True, ignore_result=True)
def run_node(self, job_id: str, attempt: int, node_rank: int) -> str:
    """Run one node of a placed multi-node attempt. Returns the node's outcome (for logs)."""
    name = self.request.hostname or worker_identity_name()
    return execute_node(str(job_id), int(attempt), int(node_rank), name)


def execute_node(job_id: str, attempt: int, node_rank: int, worker_name: str) -> str:
    rt = runtime()
    try:
        node = rt.repo.start_node(job_id, attempt, node_rank, worker_name)
    except Exception:
        log.exception("job %s node %d: start failed (database unreachable?)", job_id, node_rank)
        return "start-error"
    if node is None:
        log.info("job %s attempt %d node %d: not started (the attempt ended or the node runs already)",
                 job_id, attempt, node_rank)
        return "not-started"
    log.info("job %s attempt %d: node %d started by %s", job_id, attempt, node_rank, worker_name)
    try:
        outcome = GangSupervisor(rt.repo, rt.settings, node, worker_name).run()
    finally:
        _release(worker_name, job_id)
    log.info("job %s attempt %d node %d: %s", job_id, attempt, node_rank, outcome)
    return outcome


def _release(worker_name: str, job_id: str) -> None:
    try:
        runtime().repo.release_worker(worker_name, job_id)
    except Exception:
        log.exception("worker %s: could not free its row after job %s", worker_name, job_id)


def _resend(job: object) -> None:
    rt = runtime()
    broker = Broker(rt.settings)
    try:
        dispatch(rt.repo, broker, job)  # type: ignore[arg-type]
    except Exception:
        log.exception("could not send the message again; the reaper will")
    finally:
        broker.close()


# The reaper -------------------------------------------------------------------------------------

_reaper_stop = threading.Event()


def reaper_loop(settings: Settings, stop: threading.Event) -> None:
    from service.reaper import reap_once

    rt = runtime()
    broker = Broker(settings)
    try:
        while not stop.wait(settings.reaper_interval_s):
            try:
                report = reap_once(rt.repo, broker, settings)
            except Exception:
                log.exception("reaper pass failed")
                continue
            if report.requeued or report.failed or report.cancelled or report.resent:
                log.info(
                    "reaper: requeued %s, failed %s, cancelled %s, resent %s",
                    report.requeued,
                    report.failed,
                    report.cancelled,
                    report.resent,
                )
    finally:
        broker.close()


# The worker registry ------------------------------------------------------------------------------


@dataclass
class Identity:
    """Who this worker is in the registry (set by `python -m worker` before the worker starts)."""

    host: str
    address: str
    queues: list[str]
    gpu_types: list[str]
    name: str = ""


identity: Identity | None = None
_registry_stop = threading.Event()


def worker_identity_name() -> str:
    return identity.name if identity and identity.name else f"worker@{socket.gethostname()}"


def _register(rt: Runtime, ident: Identity) -> None:
    rt.repo.register_worker(ident.name, ident.host, ident.address, gpu_count(), ident.gpu_types, ident.queues)


def registry_loop(ident: Identity, stop: threading.Event) -> None:
    rt = runtime()
    while not stop.wait(rt.settings.heartbeat_interval_s):
        try:
            if not rt.repo.worker_heartbeat(ident.name):
                _register(rt, ident)
        except Exception:
            log.warning("worker %s: registry heartbeat failed", ident.name, exc_info=True)


@worker_ready.connect
def _register_worker(sender: object = None, **_kwargs: object) -> None:
    if identity is None:
        return
    identity.name = str(getattr(sender, "hostname", "") or identity.name)
    try:
        _register(runtime(), identity)
    except Exception:
        log.exception("worker %s: could not register (the heartbeat thread retries)", identity.name)
    _registry_stop.clear()
    threading.Thread(
        target=registry_loop, args=(identity, _registry_stop), name="sgmim-registry", daemon=True
    ).start()
    log.info("registered as %s on host %s (%s), queues %s", identity.name, identity.host, identity.address,
             ",".join(identity.queues))


@worker_shutdown.connect
def _unregister_worker(**_kwargs: object) -> None:
    _registry_stop.set()
    if identity is not None and identity.name:
        try:
            runtime().repo.unregister_worker(identity.name)
        except Exception:
            log.warning("worker %s: could not unregister", identity.name, exc_info=True)


@worker_ready.connect
def _start_reaper(**_kwargs: object) -> None:
    settings = runtime().settings
    if settings.reaper_in_api:
        log.info("reaper: runs in the API (reaper_in_api)")
        return
    _reaper_stop.clear()
    threading.Thread(
        target=reaper_loop, args=(settings, _reaper_stop), name="sgmim-reaper", daemon=True
    ).start()
    log.info(
        "reaper: every %g s (stale heartbeat after %g s)",
        settings.reaper_interval_s,
        settings.stale_heartbeat_s,
    )


@worker_shutdown.connect
def _stop_reaper(**_kwargs: object) -> None:
    _reaper_stop.set()


# Stopping an idle worker ----------------------------------------------------------------------


def _busy() -> bool:
    """A message received or a task running in the pool (Celery's own bookkeeping)."""
    from celery.worker import state

    return bool(state.active_requests or state.reserved_requests)


@worker_shutting_down.connect
def _stop_at_once_when_idle(exitcode: int | None = 0, **_kwargs: object) -> None:
    """Celery's warm shutdown of an idle worker still waits out the polling loops of its broker
    transport, pool and timer: about 7 s on the filesystem broker, every time a user stops
    `sgmim serve --with-worker` or the demo ends. With no job there is nothing to finish: the
    worker unregisters and exits. From a thread, not from the signal handler: the main thread
    may have been interrupted holding a lock (the database pool's, logging's) that the
    unregistering needs; it goes on with Celery's shutdown meanwhile, which this overtakes.
    A message that arrives in between keeps the worker on Celery's path; one that arrives after
    the last check is the reaper's (an unclaimed queued job's message is sent again)."""
    if _busy():
        return
    threading.Thread(target=_exit_idle, args=(exitcode or 0,), name="sgmim-idle-exit", daemon=True).start()


def _exit_idle(exitcode: int) -> None:
    _stop_reaper()
    _unregister_worker()
    if _busy():
        return
    log.info("no job running: stopped at once")
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(exitcode)  # the idle pool child dies with this process (PR_SET_PDEATHSIG)
