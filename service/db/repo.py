"""The job repository: what the API and the worker call, one transaction per method.

`JobRepo` is the job lifecycle (submit, claim, heartbeat, cancel, resume, finish, requeue) and
composes the other concerns, each in a module of its own, so callers hold one object:
`service.db.events` (status events, metric points, log lines), `service.db.records`
(checkpoints, evaluation results), `service.db.tokens` (API tokens), `service.db.studies`
(studies and their cells' job records). Errors are in
`service.db.errors`, shared helpers in `service.db.base`.

Every status change goes through `_transition`, which checks `sgmim.status.TRANSITIONS` and
appends a status event in the same transaction; an illegal change raises `InvalidTransition`
(the API's 409).

The worker uses, with `repo = JobRepo(Database.from_settings(settings))`:

    attempt = repo.claim_job(job_id, worker_name)          # None: not queued (already claimed,
                                                           # cancelled, ...): do nothing
    repo.heartbeat(job_id, attempt, {"step": 10, "total_steps": 100, "epoch": 0.1})
                                                           # -> "running" | "cancelling" | None
    repo.append_metrics(job_id, [{"step", "epoch", "name", "value", "time"}, ...])
    repo.append_logs(job_id, ["line", ...])
    repo.record_checkpoint(job_id, "global_step100", "deepspeed", 100, size, "checkpoints/global_step100")
    repo.record_checkpoint(job_id, "encoder", "encoder", 100, size, "export/encoder.safetensors")
    repo.record_checkpoint(job_id, "model", "model", 100, size, "export/model.safetensors")  # finetune
    repo.set_evaluation(job_id, {...})
    repo.finish_job(job_id, attempt, "succeeded" | "failed" | "cancelled", error=None)
    repo.is_cancel_requested(job_id)
    repo.find_stale_running(threshold_s) / repo.find_unclaimed_queued(threshold_s) / repo.requeue(job_id)
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from service.db.base import clean_text
from service.db.errors import IdempotencyConflict, InvalidTransition, JobNotFound, ParentError
from service.db.events import EventRepo
from service.db.gang import GangRepo
from service.db.models import Attempt, Checkpoint, IdempotencyKey, Job, StatusEvent, utcnow
from service.db.organise import OrganiseRepo, pack_tags
from service.db.records import RecordRepo
from service.db.studies import StudyRepo, hold_study_open
from service.db.tokens import TokenRepo
from sgmim.status import ACTIVE, TERMINAL, TRANSITIONS, JobStatus

MAX_ERROR = 65_536


# Ids -------------------------------------------------------------------------------------------

_B32 = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_id_lock = threading.Lock()
_id_last = [0, 0]


def _b32(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        out.append(_B32[n & 31])
        n >>= 5
    return "".join(reversed(out))


def new_job_id() -> str:
    """16 characters, time-sortable (ms timestamp, then 30 random bits; monotonic per process)."""
    ms = time.time_ns() // 1_000_000
    with _id_lock:
        if ms <= _id_last[0]:
            ms, rand = _id_last[0], _id_last[1] + 1
            if rand >= 1 << 30:
                ms, rand = ms + 1, secrets.randbits(29)
        else:
            rand = secrets.randbits(29)  # leaves room to count up within one millisecond
        _id_last[:] = [ms, rand]
    return _b32(ms, 10) + _b32(rand, 6)




# Values ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class NewJob:
    """A job row exactly as `submit` inserted it. Building this instead of an ORM `Job` (and
    inserting with prepared Core statements) is most of what a submit's CPU used to be."""

    id: str
    kind: str
    name: str
    spec: dict[str, Any]
    status: str
    parent_id: str | None
    parent_checkpoint: str | None
    tags: str
    note: str | None
    webhook_url: str | None
    priority: int
    max_restarts: int
    queue: str
    nodes: int
    created_at: dt.datetime
    updated_at: dt.datetime
    notify_attempts: int = 0
    restarts: int = 0
    attempt: int = 0
    last_seq: int = 1
    worker: str | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    error: str | None = None
    last_metrics: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    enqueued_at: dt.datetime | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    cancel_requested_at: dt.datetime | None = None
    archived_at: dt.datetime | None = None
    notify_state: str | None = None
    notify_next_at: dt.datetime | None = None


@dataclass
class SubmitResult:
    job: Job | NewJob  # NewJob when created, the stored row on a replay
    created: bool


@dataclass
class StaleJob:
    id: str
    status: str
    attempt: int
    worker: str | None
    heartbeat_at: dt.datetime | None


@dataclass
class QueuedJob:
    id: str
    queue: str
    priority: int
    enqueued_at: dt.datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    nodes: int = 1


PROGRESS_FIELDS = ("step", "total_steps", "epoch")


def _progress_values(progress: dict[str, Any] | None) -> dict[str, Any]:
    """The known fields of a worker's progress report: an unknown one (None) keeps the stored value."""
    return {k: progress[k] for k in PROGRESS_FIELDS if progress and progress.get(k) is not None}




# The repository --------------------------------------------------------------------------------


class JobRepo(EventRepo, RecordRepo, TokenRepo, OrganiseRepo, GangRepo, StudyRepo):
    """The job lifecycle, with the event, record, token, organising (tags, notes, archive,
    delete), worker-registry/gang and study operations composed in."""

    # --- status machine --------------------------------------------------------------------

    def _lock_job(self, s: Session, job_id: str) -> Job:
        job = s.execute(
            select(Job)
            .where(Job.id == job_id)
            .with_for_update()
            .options(defer(Job.spec), defer(Job.evaluation))
        ).scalar_one_or_none()
        if job is None:
            raise JobNotFound(job_id)
        return job

    def _transition(
        self, s: Session, job: Job, target: str, *, action: str | None = None, **values: Any
    ) -> None:
        """Check TRANSITIONS, update the row with `values` and append the status event (its error is
        values["error"] when given)."""
        if target not in TRANSITIONS.get(job.status, frozenset()):
            raise InvalidTransition(job.id, job.status, target, action)
        previous = job.status
        now = utcnow()
        if values.get("error") is not None:
            values["error"] = storable_error(values["error"])
        if target in TERMINAL:  # announced by service/notify.py
            values.update(notify_state="pending", notify_attempts=0, notify_next_at=None)
        seq = self._next_seq(s, job.id, 1)
        s.execute(update(Job).where(Job.id == job.id).values(status=target, updated_at=now, **values))
        s.execute(
            insert(StatusEvent).values(
                job_id=job.id,
                seq=seq,
                time=now.timestamp(),
                status=target,
                previous=previous,
                attempt=values.get("attempt", job.attempt),
                error=values.get("error"),
            )
        )
        s.expire(job)

    def transition(self, job_id: str, target: str, *, error: str | None = None) -> Job:
        """Move a job to `target` if the state machine allows it (raises InvalidTransition)."""
        with self.db.write() as s:
            job = self._lock_job(s, job_id)
            values: dict[str, Any] = {"error": error}
            if target in TERMINAL:
                values["finished_at"] = utcnow()
            self._transition(s, job, target, **values)
            return self._get(s, job_id)

    # --- API side ----------------------------------------------------------------------------

    def check_parent(
        self, parent_id: str | None, checkpoint: str | None, child_kind: str, required_kind: str | None
    ) -> None:
        """Raise ParentError unless the parent exists, succeeded, has the right kind and the named
        checkpoint (when one is named)."""
        if parent_id is None:
            return
        with self.db.read() as s:
            parent = s.execute(select(Job.id, Job.kind, Job.status).where(Job.id == parent_id)).one_or_none()
            if parent is None:
                raise ParentError("parent.job_id", f"parent job {parent_id} does not exist")
            if required_kind is not None and parent.kind != required_kind:
                raise ParentError(
                    "parent.job_id",
                    f"a {child_kind} job's parent must be a {required_kind} "
                    f"job; {parent_id} is a {parent.kind} job",
                )
            if parent.status != JobStatus.SUCCEEDED:
                raise ParentError(
                    "parent.job_id", f"parent job {parent_id} is {parent.status}; it must have succeeded"
                )
            if checkpoint is not None:
                found = s.execute(
                    select(Checkpoint.name).where(
                        Checkpoint.job_id == parent_id, Checkpoint.name == checkpoint
                    )
                ).first()
                if found is None:
                    raise ParentError(
                        "parent.checkpoint", f"parent job {parent_id} has no checkpoint named {checkpoint!r}"
                    )

    def submit(
        self,
        spec: dict[str, Any],
        *,
        queue: str,
        idempotency_key_hash: str | None = None,
        body_hash: str | None = None,
        idempotency_ttl_s: float = 24 * 3600.0,
        study: str | None = None,
    ) -> SubmitResult:
        """Store a validated spec (its `model_dump(mode="json")`) as a queued job.

        With an idempotency key: the same key and body return the existing job (created=False);
        the same key with another body raises IdempotencyConflict. Concurrent submits with one
        key create exactly one job (the key's primary key decides; the losers read the winner).
        With `study` (a study's pass): a new job is stored only if that study is not cancelled,
        checked in the inserting transaction (`hold_study_open`), else StudyCancelled; a replay
        stores nothing and is returned as ever.
        """
        if idempotency_key_hash is not None:
            found = self._idempotent_lookup(idempotency_key_hash, body_hash, idempotency_ttl_s)
            if found is not None:
                return SubmitResult(found, False)
        job = _new_job(spec, queue)
        try:
            with self.db.write_connection() as conn:
                if idempotency_key_hash is not None:
                    _claim_key(conn, idempotency_key_hash, idempotency_ttl_s)
                if study is not None:
                    hold_study_open(conn, study)
                conn.execute(_INSERT_JOB, _job_values(job))
                conn.execute(_INSERT_EVENT, _first_event(job))
                if idempotency_key_hash is not None:
                    conn.execute(
                        _INSERT_KEY,
                        dict(key_hash=idempotency_key_hash, body_hash=body_hash or "", job_id=job.id,
                             created_at=job.created_at),
                    )
        except _Replay as replay:
            if replay.body_hash != body_hash:
                raise IdempotencyConflict(replay.job_id) from None
            return SubmitResult(self.get(replay.job_id), False)
        except IntegrityError:
            if idempotency_key_hash is None:
                raise
            # Another request with the same key won the race (Postgres: its insert committed first).
            found = self._idempotent_lookup(idempotency_key_hash, body_hash, idempotency_ttl_s)
            if found is None:
                raise
            return SubmitResult(found, False)
        return SubmitResult(job, True)

    def submit_many(self, specs: Sequence[tuple[dict[str, Any], str]]) -> list[NewJob]:
        """Store validated specs, each with its queue, as queued jobs in one transaction (no
        idempotency keys): all or none. The group commit of `service.batcher`."""
        jobs = [_new_job(spec, queue) for spec, queue in specs]
        if not jobs:
            return jobs
        with self.db.write_connection() as conn:
            conn.execute(_INSERT_JOB, [_job_values(job) for job in jobs])
            conn.execute(_INSERT_EVENT, [_first_event(job) for job in jobs])
        return jobs

    def _idempotent_lookup(self, key_hash: str, body_hash: str | None, ttl_s: float) -> Job | None:
        with self.db.read() as s:
            row = s.get(IdempotencyKey, key_hash)
            if row is None or _expired(row.created_at, ttl_s):
                return None
            if row.body_hash != body_hash:
                raise IdempotencyConflict(row.job_id)
            return self._get(s, row.job_id)

    def mark_enqueued(self, job_id: str) -> None:
        """The job's wake-up message is being sent (now)."""
        with self.db.write() as s:
            queued = (Job.id == job_id) & (Job.status == JobStatus.QUEUED)
            s.execute(update(Job).where(queued).values(enqueued_at=utcnow()))

    def claim_sends(self, job_ids: Sequence[str]) -> set[str]:
        """Mark unsent queued jobs as being sent, in one transaction; returns the ones this call
        marked (not those another process marked first or that are no longer queued), so that
        of several dispatchers exactly one sends each job."""
        if not job_ids:
            return set()
        unsent = Job.id.in_(job_ids) & (Job.status == JobStatus.QUEUED) & Job.enqueued_at.is_(None)
        with self.db.write_connection() as conn:
            marked = conn.execute(update(Job).where(unsent).values(enqueued_at=utcnow()).returning(Job.id))
            return set(marked.scalars())

    def unsent_queued(self, limit: int = 200) -> list[QueuedJob]:
        """Queued jobs whose wake-up message was never sent (the outbox), highest priority first."""
        with self.db.read() as s:
            return [
                QueuedJob(r.id, r.queue, r.priority, r.enqueued_at, nodes=r.nodes)
                for r in s.execute(
                    select(Job.id, Job.queue, Job.priority, Job.enqueued_at, Job.nodes)
                    .where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))
                    .order_by(Job.priority.desc(), Job.id)
                    .limit(limit)
                )
            ]

    def mark_unsent(self, job_id: str) -> None:
        """Sending the job's message failed: let the reaper send it."""
        with self.db.write() as s:
            queued = (Job.id == job_id) & (Job.status == JobStatus.QUEUED)
            s.execute(update(Job).where(queued).values(enqueued_at=None))

    def _get(self, s: Session, job_id: str) -> Job:
        job = s.get(Job, job_id, populate_existing=True)
        if job is None:
            raise JobNotFound(job_id)
        return job

    def get(self, job_id: str) -> Job:
        with self.db.read() as s:
            job = self._get(s, job_id)
            s.expunge(job)
            return job

    def list(
        self,
        *,
        status: Sequence[str] | None = None,
        kind: Sequence[str] | None = None,
        limit: int = 50,
        before_id: str | None = None,
        tags: Sequence[str] = (),
        search: str | None = None,
        since: dt.datetime | None = None,
        archived: bool = False,
    ) -> list[Job]:
        """Newest first (ids are time-sortable); `before_id` is the cursor: ids below it. `tags`:
        all of them; `search`: in the name, any case; `since`: created at or after; archived jobs
        only when `archived`."""
        stmt = select(Job).options(defer(Job.spec), defer(Job.evaluation))
        stmt = stmt.where(Job.archived_at.is_not(None) if archived else Job.archived_at.is_(None))
        for tag in tags:
            stmt = stmt.where(Job.tags.contains(f",{tag},", autoescape=True))
        if search:
            stmt = stmt.where(func.lower(Job.name).contains(search.lower(), autoescape=True))
        if since is not None:
            stmt = stmt.where(Job.created_at >= since)
        if status:
            stmt = stmt.where(Job.status.in_(list(status)))
        if kind:
            stmt = stmt.where(Job.kind.in_(list(kind)))
        if before_id is not None:
            stmt = stmt.where(Job.id < before_id)
        stmt = stmt.order_by(Job.id.desc()).limit(limit)
        with self.db.read() as s:
            jobs = list(s.execute(stmt).scalars())
            s.expunge_all()
            return jobs

    def cancel(self, job_id: str) -> Job:
        """queued -> cancelled; running -> cancelling; cancelling/cancelled: unchanged (harmless);
        succeeded/failed: InvalidTransition."""
        with self.db.write() as s:
            job = self._lock_job(s, job_id)
            now = utcnow()
            if job.status == JobStatus.QUEUED:
                self._transition(
                    s, job, JobStatus.CANCELLED, action="cancel", finished_at=now, cancel_requested_at=now
                )
            elif job.status == JobStatus.RUNNING:
                self._transition(s, job, JobStatus.CANCELLING, action="cancel", cancel_requested_at=now)
            elif job.status not in (JobStatus.CANCELLING, JobStatus.CANCELLED):
                raise InvalidTransition(job_id, job.status, JobStatus.CANCELLED, "cancel")
            return self._get(s, job_id)

    def resume(self, job_id: str, study: str | None = None) -> Job:
        """failed/cancelled -> queued (the caller re-enqueues); anything else: InvalidTransition.
        With `study` (a study's pass): only if that study is not cancelled, checked in this
        transaction (`hold_study_open`), else StudyCancelled."""
        with self.db.write() as s:
            if study is not None:
                hold_study_open(s, study)
            job = self._lock_job(s, job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise InvalidTransition(job_id, job.status, JobStatus.QUEUED, "resume")
            self._transition(
                s,
                job,
                JobStatus.QUEUED,
                action="resume",
                error=None,
                # `show` reports the new attempt's progress, not the last one's
                step=None,
                total_steps=None,
                epoch=None,
                last_metrics=None,
                finished_at=None,
                cancel_requested_at=None,
                enqueued_at=None,
                restarts=0,
                worker=None,
            )
            return self._get(s, job_id)

    # --- reads -----------------------------------------------------------------------------------

    def attempts(self, job_id: str) -> list[Attempt]:
        """The job's claims by workers, first to last."""
        with self.db.read() as s:
            self._require(s, job_id)
            rows = list(
                s.execute(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.attempt)).scalars()
            )
            s.expunge_all()
            return rows

    def status_history(self, job_id: str) -> list[StatusEvent]:
        """Every status change of the job, in order."""
        with self.db.read() as s:
            self._require(s, job_id)
            rows = list(
                s.execute(
                    select(StatusEvent).where(StatusEvent.job_id == job_id).order_by(StatusEvent.seq)
                ).scalars()
            )
            s.expunge_all()
            return rows

    def children(self, job_id: str, limit: int = 100) -> list[Job]:
        """Jobs whose parent is this one, oldest first."""
        with self.db.read() as s:
            rows = list(
                s.execute(
                    select(Job)
                    .options(defer(Job.spec), defer(Job.evaluation))
                    .where(Job.parent_id == job_id)
                    .order_by(Job.id)
                    .limit(limit)
                ).scalars()
            )
            s.expunge_all()
            return rows

    def running_jobs(self) -> list[Job]:
        """running and cancelling jobs (with their spec: the resources they asked for), oldest first."""
        with self.db.read() as s:
            rows = list(
                s.execute(
                    select(Job)
                    .options(defer(Job.evaluation))
                    .where(Job.status.in_(list(ACTIVE)))
                    .order_by(Job.id)
                ).scalars()
            )
            s.expunge_all()
            return rows

    def queued_jobs(self, limit: int = 200) -> list[Job]:
        """queued jobs in the order workers take them: per queue, priority 9 first, then oldest."""
        with self.db.read() as s:
            rows = list(
                s.execute(
                    select(Job)
                    .options(defer(Job.evaluation))
                    .where(Job.status == JobStatus.QUEUED)
                    .order_by(Job.queue, Job.priority.desc(), Job.id)
                    .limit(limit)
                ).scalars()
            )
            s.expunge_all()
            return rows

    def recent_attempts(self, since: dt.datetime, limit: int = 500) -> list[Attempt]:
        """Attempts started since `since`, newest first (who ran what lately)."""
        with self.db.read() as s:
            rows = list(
                s.execute(
                    select(Attempt)
                    .where(Attempt.started_at >= since)
                    .order_by(Attempt.started_at.desc())
                    .limit(limit)
                ).scalars()
            )
            s.expunge_all()
            return rows

    def count_by_status(self) -> dict[str, int]:
        with self.db.read() as s:
            counts = dict.fromkeys(JobStatus, 0)
            for status, n in s.execute(select(Job.status, func.count()).group_by(Job.status)):
                counts[status] = int(n)
            return counts

    def queued_queues(self) -> dict[str, int]:
        """Queued jobs per queue (the DB's view of queue depth)."""
        with self.db.read() as s:
            return {
                q: int(n)
                for q, n in s.execute(
                    select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED).group_by(Job.queue)
                )
            }

    def ping(self) -> None:
        with self.db.read() as s:
            s.execute(select(1)).scalar_one()

    # --- worker side -------------------------------------------------------------------------

    def claim_job(self, job_id: str, worker_name: str) -> int | None:
        """queued -> running for this worker; returns the attempt number, or None when the job is
        not queued (claimed by someone else, cancelled, gone) or when a gang has reserved this
        worker (the job stays queued; the caller sends its message again). Atomic: of two
        concurrent claims exactly one wins."""
        now = utcnow()
        with self.db.write() as s:
            try:
                job = self._lock_job(s, job_id)
            except JobNotFound:
                return None
            if job.status != JobStatus.QUEUED:
                return None
            attempt = job.attempt + 1
            if not self.occupy_worker(s, worker_name, job_id, attempt):
                return None
            self._transition(
                s,
                job,
                JobStatus.RUNNING,
                action="claim",
                attempt=attempt,
                worker=worker_name,
                started_at=now,
                heartbeat_at=now,
                finished_at=None,
                error=None,
            )
            s.execute(
                insert(Attempt).values(
                    job_id=job_id, attempt=attempt, worker=worker_name, started_at=now,
                    status=JobStatus.RUNNING,
                )
            )
            return attempt

    def heartbeat(self, job_id: str, attempt: int, progress: dict[str, Any] | None = None) -> str | None:
        """Record liveness (and optional progress: step, total_steps, epoch) of this attempt.

        Returns the job's status (JobStatus.RUNNING or JobStatus.CANCELLING: stop the run) while this attempt
        owns the job, else None (the job was requeued or finished: stop without writing more)."""
        values: dict[str, Any] = {"heartbeat_at": utcnow(), **_progress_values(progress)}
        with self.db.write() as s:
            status = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.attempt == attempt, Job.status.in_(list(ACTIVE)))
                .values(**values)
                .returning(Job.status)
            ).scalar_one_or_none()
            return status

    def finish_job(
        self,
        job_id: str,
        attempt: int,
        status: str,
        error: str | None = None,
        progress: dict[str, Any] | None = None,
    ) -> bool:
        """End this attempt: running/cancelling -> succeeded | failed | cancelled, recording its
        final progress (step, total_steps, epoch) too: a run shorter than one heartbeat interval
        would otherwise end without its total.

        Returns False (and changes nothing) when `attempt` no longer owns the job (the reaper
        requeued it and another attempt runs). Raises InvalidTransition for a target the state
        machine forbids from the current status (e.g. running -> cancelled without a cancel)."""
        if status not in TERMINAL:
            raise ValueError(f"finish status must be one of {sorted(TERMINAL)}")
        error = storable_error(error)
        now = utcnow()
        with self.db.write() as s:
            job = self._lock_job(s, job_id)
            if job.attempt != attempt or job.status not in ACTIVE:
                return False
            if status == JobStatus.CANCELLED and job.status == JobStatus.RUNNING:
                raise InvalidTransition(job_id, job.status, status, "finish as cancelled")
            self._transition(s, job, status, error=error, finished_at=now, **_progress_values(progress))
            self._release_unstarted(s, job_id, attempt)
            s.execute(
                update(Attempt)
                .where(Attempt.job_id == job_id, Attempt.attempt == attempt)
                .values(finished_at=now, status=status, error=error)
            )
            return True

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.db.read() as s:
            status = s.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
            if status is None:
                raise JobNotFound(job_id)
            return status in (JobStatus.CANCELLING, JobStatus.CANCELLED)

    def find_stale_running(self, threshold_s: float) -> list[StaleJob]:
        """running/cancelling jobs whose heartbeat is older than threshold_s seconds."""
        cutoff = utcnow() - dt.timedelta(seconds=threshold_s)
        with self.db.read() as s:
            return [
                StaleJob(r.id, r.status, r.attempt, r.worker, r.heartbeat_at)
                for r in s.execute(
                    select(Job.id, Job.status, Job.attempt, Job.worker, Job.heartbeat_at)
                    .where(
                        Job.status.in_(list(ACTIVE)),
                        (Job.heartbeat_at.is_(None)) | (Job.heartbeat_at < cutoff),
                    )
                    .order_by(Job.id)
                )
            ]

    def find_unclaimed_queued(self, threshold_s: float) -> list[QueuedJob]:
        """queued jobs whose message was never sent or was sent more than threshold_s ago (and
        nobody claimed them): the reaper dispatches them again."""
        cutoff = utcnow() - dt.timedelta(seconds=threshold_s)
        with self.db.read() as s:
            return [
                QueuedJob(r.id, r.queue, r.priority, r.enqueued_at, nodes=r.nodes)
                for r in s.execute(
                    select(Job.id, Job.queue, Job.priority, Job.enqueued_at, Job.nodes)
                    .where(Job.status == JobStatus.QUEUED,
                           (Job.enqueued_at.is_(None)) | (Job.enqueued_at < cutoff))
                    .order_by(Job.id)
                )
            ]

    def requeue(
        self, job_id: str, reason: str = "worker lost (stale heartbeat)", attempt: int | None = None
    ) -> str | None:
        """Recover a running/cancelling job whose worker vanished (the reaper; node 0 of a gang:
        one of its nodes vanished) or whose trainer was killed by a signal (its supervisor,
        passing its `attempt`). Returns the new status:
        running -> queued while restarts < max_restarts (restarts += 1), else -> failed;
        cancelling -> cancelled; None (nothing changed) when `attempt` is given and no longer
        owns the job. A queued job has no message in flight (enqueued_at NULL): the caller or
        the reaper's next pass sends it."""
        reason = storable_error(reason) or ""
        now = utcnow()
        with self.db.write() as s:
            job = self._lock_job(s, job_id)
            if attempt is not None and (job.attempt != attempt or job.status not in ACTIVE):
                return None
            if job.status == JobStatus.CANCELLING:
                self._transition(s, job, JobStatus.CANCELLED, action="requeue", finished_at=now)
                target = JobStatus.CANCELLED
            elif job.status == JobStatus.RUNNING and job.restarts < job.max_restarts:
                self._transition(
                    s,
                    job,
                    JobStatus.QUEUED,
                    action="requeue",
                    error=reason,
                    restarts=job.restarts + 1,
                    enqueued_at=None,
                    worker=None,
                )
                target = JobStatus.QUEUED
            elif job.status == JobStatus.RUNNING:
                msg = f"{reason}; max_restarts ({job.max_restarts}) exhausted"
                self._transition(s, job, JobStatus.FAILED, action="requeue", error=msg, finished_at=now)
                target = JobStatus.FAILED
            else:
                raise InvalidTransition(job_id, job.status, JobStatus.QUEUED, "requeue")
            s.execute(
                update(Attempt)
                .where(
                    Attempt.job_id == job_id, Attempt.attempt == job.attempt, Attempt.finished_at.is_(None)
                )
                .values(finished_at=now, status="lost", error=reason)
            )
            self._release_unstarted(s, job_id, job.attempt)
            return target


class _Replay(Exception):
    def __init__(self, job_id: str, body_hash: str):
        self.job_id, self.body_hash = job_id, body_hash


def storable_error(error: str | None) -> str | None:
    """An error text both databases store (no NUL, valid UTF-8), cut to MAX_ERROR."""
    return None if error is None else clean_text(str(error))[:MAX_ERROR]


def _expired(created_at: dt.datetime, ttl_s: float) -> bool:
    return utcnow() - created_at > dt.timedelta(seconds=ttl_s)


# Submit's statements: built once, so SQLAlchemy's compiled cache finds them without rebuilding
# a statement (and its cache key) per request.
_INSERT_JOB = Job.__table__.insert()
_INSERT_EVENT = StatusEvent.__table__.insert()
_INSERT_KEY = IdempotencyKey.__table__.insert()
_SELECT_KEY = select(IdempotencyKey.job_id, IdempotencyKey.body_hash, IdempotencyKey.created_at).where(
    IdempotencyKey.key_hash == bindparam("key")
)
_DELETE_KEY = delete(IdempotencyKey).where(IdempotencyKey.key_hash == bindparam("key"))
_JOB_COLUMNS = tuple(c.key for c in Job.__table__.columns)


def _new_job(spec: dict[str, Any], queue: str) -> NewJob:
    """The queued row of a validated spec (its `model_dump(mode="json")`)."""
    parent = spec.get("parent") or {}
    now = utcnow()
    return NewJob(
        id=new_job_id(),
        kind=spec["kind"],
        name=spec["name"],
        spec=spec,
        status=JobStatus.QUEUED,
        parent_id=parent.get("job_id"),
        parent_checkpoint=parent.get("checkpoint"),
        tags=pack_tags(spec.get("tags") or []),
        note=spec.get("note"),
        webhook_url=spec.get("webhook"),
        priority=int(spec.get("priority", 5)),
        max_restarts=int(spec.get("max_restarts", 0)),
        queue=queue,
        nodes=int((spec.get("resources") or {}).get("nodes", 1)),
        created_at=now,
        updated_at=now,
    )


def _job_values(job: NewJob) -> dict[str, Any]:
    return {name: getattr(job, name) for name in _JOB_COLUMNS}


def _first_event(job: NewJob) -> dict[str, Any]:
    return dict(job_id=job.id, seq=1, time=job.created_at.timestamp(), status=JobStatus.QUEUED,
                previous=None, attempt=0, error=None)


def _claim_key(conn: Connection, key_hash: str, ttl_s: float) -> None:
    """Inside submit's transaction: raise _Replay when the key is live; drop it when expired."""
    existing = conn.execute(_SELECT_KEY, {"key": key_hash}).first()
    if existing is None:
        return
    if not _expired(existing.created_at, ttl_s):
        raise _Replay(existing.job_id, existing.body_hash)
    conn.execute(_DELETE_KEY, {"key": key_hash})
