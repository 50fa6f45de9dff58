"""Organising experiments: tags and notes, archive, delete, checkpoint retention, and the state
of terminal-state notifications (webhooks).

Tags are stored as one text column `,a,b,` so that `LIKE '%,a,%'` finds a tag on SQLite and
Postgres alike; the API reads and writes them as lists. A terminal transition sets
`notify_state = 'pending'` (repo._transition); the dispatcher (service/notify.py) delivers it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from service.db.base import RepoBase
from service.db.errors import InvalidTransition, JobNotFound
from service.db.models import (
    Attempt,
    Checkpoint,
    IdempotencyKey,
    Job,
    LogLine,
    Metric,
    StatusEvent,
    utcnow,
)
from sgmim.status import ACTIVE, TERMINAL, JobStatus


def pack_tags(tags: Sequence[str]) -> str:
    unique = list(dict.fromkeys(t for t in tags if t))
    return f",{','.join(unique)}," if unique else ""


def unpack_tags(packed: str | None) -> list[str]:
    return [t for t in (packed or "").split(",") if t]


class OrganiseRepo(RepoBase):
    """Tags, notes, archive, delete, retention and notification bookkeeping."""

    def update_job(
        self,
        job_id: str,
        *,
        add_tags: Sequence[str] = (),
        remove_tags: Sequence[str] = (),
        note: str | None = None,
        archived: bool | None = None,
    ) -> None:
        """Add/remove tags, replace the note ('' clears it), archive or unarchive."""
        with self.db.write() as s:
            row = s.execute(select(Job.tags).where(Job.id == job_id).with_for_update()).one_or_none()
            if row is None:
                raise JobNotFound(job_id)
            tags = [t for t in unpack_tags(row.tags) if t not in set(remove_tags)] + list(add_tags)
            values: dict[str, Any] = {"tags": pack_tags(tags), "updated_at": utcnow()}
            if note is not None:
                values["note"] = note or None
            if archived is not None:
                values["archived_at"] = utcnow() if archived else None
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def child_ids(self, job_id: str) -> list[str]:
        """Every job whose parent is this one, oldest first."""
        with self.db.read() as s:
            return list(s.execute(select(Job.id).where(Job.parent_id == job_id).order_by(Job.id)).scalars())

    def forget_job(self, job_id: str) -> None:
        """Delete the job's rows (the caller removed its run directory); children keep their
        spec's parent id but lose the link."""
        with self.db.write() as s:
            status = self._lock_status(s, job_id)
            if status in ACTIVE or status == JobStatus.QUEUED:
                raise InvalidTransition(job_id, status, "deleted", "delete")
            s.execute(update(Job).where(Job.parent_id == job_id).values(parent_id=None))
            for table in (Metric, LogLine, StatusEvent, Checkpoint, Attempt, IdempotencyKey):
                s.execute(delete(table).where(table.job_id == job_id))
            s.execute(delete(Job).where(Job.id == job_id))

    def _lock_status(self, s: Session, job_id: str) -> str:
        status = s.execute(select(Job.status).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
        if status is None:
            raise JobNotFound(job_id)
        return status

    def check_deletable(self, job_id: str, action: str = "delete") -> None:
        """Raise InvalidTransition (409) unless the job has ended; `action` names what was asked."""
        with self.db.read() as s:
            status = s.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
            if status is None:
                raise JobNotFound(job_id)
            if status not in TERMINAL:
                raise InvalidTransition(job_id, status, "deleted", action)

    def terminal_jobs_with_checkpoints_over(self, keep: int) -> list[str]:
        """Ended jobs holding more than `keep` DeepSpeed tags (the retention pass's work)."""
        with self.db.read() as s:
            return list(
                s.execute(
                    select(Checkpoint.job_id)
                    .join(Job, Job.id == Checkpoint.job_id)
                    .where(Checkpoint.kind == "deepspeed", Job.status.in_(list(TERMINAL)))
                    .group_by(Checkpoint.job_id)
                    .having(func.count() > keep)
                ).scalars()
            )

    # --- notifications ---------------------------------------------------------------------------

    def due_notifications(self, limit: int = 20) -> list[Job]:
        now = utcnow()
        with self.db.read() as s:
            jobs = list(
                s.execute(
                    select(Job)
                    .where(Job.notify_state == "pending",
                           (Job.notify_next_at.is_(None)) | (Job.notify_next_at <= now))
                    .order_by(Job.id)
                    .limit(limit)
                ).scalars()
            )
            s.expunge_all()
            return jobs

    def notified(self, job_id: str, state: str, attempts: int, next_at: dt.datetime | None = None) -> None:
        """Record a delivery outcome: sent / failed / none, or pending again at next_at."""
        with self.db.write() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.notify_state == "pending")
                .values(notify_state=state, notify_attempts=attempts, notify_next_at=next_at)
            )
