"""The worker registry and the gangs of multi-node jobs (composed into `JobRepo`).

Workers write their own row (`register_worker` at start, `worker_heartbeat` every
`heartbeat_interval_s`); a row whose heartbeat is older than `stale_s` is a gone worker and is
never chosen. A job with `nodes > 1` is placed by `reserve_gang`, one transaction that locks the
job row and the worker rows (in name order, so two placements never wait on each other in a
cycle) and either reserves N free workers on N distinct hosts serving the job's queue, claims the
job (queued -> running, attempt + 1, node 0's worker as the job's worker) and writes one
`job_nodes` row per node rank, or changes nothing but the job's visible waiting reason. All or
nothing: a partial reservation never exists, so two gangs cannot hold half of each other's
workers.

Node states: reserved (the message is on its way) -> running (its worker started it) ->
exited (with the launcher's exit code) | stopped (stopped by its supervisor: cancel, the
attempt ended elsewhere) | released (never started: the attempt ended first). A worker's row
names the job it runs or is reserved for; the worker clears it when its task ends, and
`_release_unstarted` clears it for nodes that never started.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from service.db.base import RepoBase
from service.db.models import Attempt, Job, JobNode, Worker, utcnow
from sgmim.status import ACTIVE, JobStatus

NODE_RESERVED, NODE_RUNNING, NODE_EXITED = "reserved", "running", "exited"
NODE_STOPPED, NODE_RELEASED = "stopped", "released"


@dataclass(frozen=True)
class NodeInfo:
    job_id: str
    attempt: int
    node_rank: int
    worker: str
    host: str
    address: str
    port: int | None
    status: str
    exit_code: int | None
    heartbeat_at: dt.datetime | None
    reserved_at: dt.datetime

    @classmethod
    def of(cls, row: JobNode) -> NodeInfo:
        return cls(row.job_id, row.attempt, row.node_rank, row.worker, row.host, row.address, row.port,
                   row.status, row.exit_code, row.heartbeat_at, row.reserved_at)


@dataclass(frozen=True)
class Gang:
    """A placed multi-node attempt: the caller sends node r's message to nodes[r].host's queue."""

    job_id: str
    attempt: int
    nodes: list[NodeInfo]


class GangRepo(RepoBase):
    """Worker registry and gang placement; needs JobRepo's `_lock_job` and `_transition`."""

    _lock_job: Any
    _transition: Any

    # --- registry ----------------------------------------------------------------------------

    def register_worker(
        self, name: str, host: str, address: str, gpus: int, gpu_types: list[str], queues: list[str]
    ) -> None:
        """Insert or replace this worker's row: a (re)started worker runs nothing."""
        now = utcnow()
        with self.db.write() as s:
            s.execute(delete(Worker).where(Worker.name == name))
            s.execute(
                insert(Worker).values(
                    name=name, host=host, address=address, gpus=gpus, gpu_types=gpu_types, queues=queues,
                    job_id=None, attempt=None, started_at=now, heartbeat_at=now,
                )
            )

    def worker_heartbeat(self, name: str) -> bool:
        """False when the row is gone (the caller registers again)."""
        with self.db.write() as s:
            done = s.execute(update(Worker).where(Worker.name == name).values(heartbeat_at=utcnow()))
            return bool(done.rowcount)

    def unregister_worker(self, name: str) -> None:
        with self.db.write() as s:
            s.execute(delete(Worker).where(Worker.name == name))

    def workers(self) -> list[Worker]:
        with self.db.read() as s:
            rows = list(s.execute(select(Worker).order_by(Worker.name)).scalars())
            s.expunge_all()
            return rows

    def occupy_worker(self, s: Session, name: str, job_id: str, attempt: int) -> bool:
        """Inside a claim: mark the worker busy with a single-node job. False (and nothing
        changed) when it holds a node of a gang (reserved or running): the gang goes first."""
        row = s.execute(select(Worker).where(Worker.name == name).with_for_update()).scalar_one_or_none()
        if row is None:
            return True  # an unregistered worker (tests, a hand-started one)
        if row.job_id is not None and row.job_id != job_id:
            reserved = s.execute(
                select(JobNode.node_rank).where(
                    JobNode.job_id == row.job_id, JobNode.attempt == row.attempt, JobNode.worker == name,
                    JobNode.status.in_([NODE_RESERVED, NODE_RUNNING]),
                )
            ).first()
            if reserved is not None:
                return False
        row.job_id, row.attempt = job_id, attempt
        return True

    def release_worker(self, name: str, job_id: str) -> None:
        """The worker's task for `job_id` ended: it is free again."""
        with self.db.write() as s:
            s.execute(
                update(Worker)
                .where(Worker.name == name, Worker.job_id == job_id)
                .values(job_id=None, attempt=None)
            )

    def live_hosts(self, queue: str, stale_s: float) -> set[str]:
        """Hosts with a live worker serving `queue`."""
        cutoff = utcnow() - dt.timedelta(seconds=stale_s)
        with self.db.read() as s:
            rows = s.execute(select(Worker.host, Worker.queues).where(Worker.heartbeat_at >= cutoff))
            return {r.host for r in rows if queue in (r.queues or [])}

    # --- placement ---------------------------------------------------------------------------

    def reserve_gang(self, job_id: str, stale_s: float) -> Gang | str | None:
        """Place a queued multi-node job: the Gang, or the reason it waits (also stored as the
        job's `error` while queued), or None when the job is not a queued multi-node job."""
        now = utcnow()
        cutoff = now - dt.timedelta(seconds=stale_s)
        with self.db.write() as s:
            job = s.execute(
                select(Job.id, Job.status, Job.nodes, Job.queue, Job.attempt, Job.error)
                .where(Job.id == job_id)
                .with_for_update()
            ).one_or_none()
            if job is None or job.status != JobStatus.QUEUED or job.nodes < 2:
                return None
            workers = list(
                s.execute(select(Worker).order_by(Worker.name).with_for_update()).scalars()
            )
            serving = [w for w in workers if job.queue in (w.queues or []) and w.heartbeat_at >= cutoff]
            chosen: dict[str, Worker] = {}
            for w in sorted(serving, key=lambda w: (w.host, w.name)):
                if w.job_id is None and w.host not in chosen:
                    chosen[w.host] = w
            if len(chosen) < job.nodes:
                hosts = len({w.host for w in serving})
                reason = (
                    f"waiting for {job.nodes} free workers on distinct hosts serving queue {job.queue}: "
                    f"{len(chosen)} free now, {hosts} host(s) live"
                )
                if job.error != reason:
                    s.execute(update(Job).where(Job.id == job_id).values(error=reason))
                return reason
            gang = list(chosen.values())[: job.nodes]
            attempt = job.attempt + 1
            locked = self._lock_job(s, job_id)
            self._transition(
                s, locked, JobStatus.RUNNING, action="place", attempt=attempt, worker=gang[0].name,
                started_at=now, heartbeat_at=now, finished_at=None, error=None,
            )
            s.execute(
                insert(Attempt).values(
                    job_id=job_id, attempt=attempt, worker=gang[0].name, started_at=now,
                    status=JobStatus.RUNNING,
                )
            )
            nodes = []
            for rank, w in enumerate(gang):
                values = dict(
                    job_id=job_id, attempt=attempt, node_rank=rank, worker=w.name, host=w.host,
                    address=w.address, port=None, status=NODE_RESERVED, exit_code=None, reserved_at=now,
                    heartbeat_at=None,
                )
                s.execute(insert(JobNode).values(**values))
                w.job_id, w.attempt = job_id, attempt
                nodes.append(NodeInfo(**{k: values[k] for k in NodeInfo.__dataclass_fields__}))
            return Gang(job_id, attempt, nodes)

    def _release_unstarted(self, s: Session, job_id: str, attempt: int) -> None:
        """The attempt ended: its nodes that never started free their workers."""
        unstarted = (
            (JobNode.job_id == job_id) & (JobNode.attempt == attempt) & (JobNode.status == NODE_RESERVED)
        )
        names = list(s.execute(select(JobNode.worker).where(unstarted)).scalars())
        s.execute(update(JobNode).where(unstarted).values(status=NODE_RELEASED))
        if names:
            # lock in name order, as reserve_gang does, so the two never wait on each other
            s.execute(select(Worker.name).where(Worker.name.in_(names)).order_by(Worker.name).with_for_update())
            s.execute(
                update(Worker)
                .where(Worker.name.in_(names), Worker.job_id == job_id, Worker.attempt == attempt)
                .values(job_id=None, attempt=None)
            )

    # --- nodes -------------------------------------------------------------------------------

    def start_node(self, job_id: str, attempt: int, node_rank: int, worker: str) -> NodeInfo | None:
        """reserved -> running for this worker's node, while the attempt owns the job; None
        otherwise (a stale or duplicated message: do nothing)."""
        with self.db.write() as s:
            current = s.execute(select(Job.attempt, Job.status).where(Job.id == job_id)).one_or_none()
            if current is None or current.attempt != attempt or current.status not in ACTIVE:
                return None
            row = s.get(JobNode, (job_id, attempt, node_rank), with_for_update=True)
            if row is None or row.worker != worker or row.status != NODE_RESERVED:
                return None
            row.status, row.heartbeat_at = NODE_RUNNING, utcnow()
            s.flush()
            return NodeInfo.of(row)

    def gang_nodes(self, job_id: str, attempt: int) -> list[NodeInfo]:
        with self.db.read() as s:
            rows = s.execute(
                select(JobNode)
                .where(JobNode.job_id == job_id, JobNode.attempt == attempt)
                .order_by(JobNode.node_rank)
            ).scalars()
            return [NodeInfo.of(r) for r in rows]

    def set_rendezvous_port(self, job_id: str, attempt: int, port: int) -> None:
        with self.db.write() as s:
            s.execute(
                update(JobNode)
                .where(JobNode.job_id == job_id, JobNode.attempt == attempt, JobNode.node_rank == 0)
                .values(port=port)
            )

    def node_heartbeat(self, job_id: str, attempt: int, node_rank: int) -> str | None:
        """A non-zero node's liveness. Returns the job's status while this attempt owns the job
        (running, or cancelling: stop), else None (the attempt ended: stop)."""
        with self.db.write() as s:
            s.execute(
                update(JobNode)
                .where(JobNode.job_id == job_id, JobNode.attempt == attempt, JobNode.node_rank == node_rank)
                .values(heartbeat_at=utcnow())
            )
            row = s.execute(select(Job.attempt, Job.status).where(Job.id == job_id)).one_or_none()
            if row is None or row.attempt != attempt or row.status not in ACTIVE:
                return None
            return row.status

    def node_ended(
        self, job_id: str, attempt: int, node_rank: int, status: str, exit_code: int | None
    ) -> None:
        with self.db.write() as s:
            s.execute(
                update(JobNode)
                .where(JobNode.job_id == job_id, JobNode.attempt == attempt, JobNode.node_rank == node_rank)
                .values(status=status, exit_code=exit_code, heartbeat_at=utcnow())
            )
