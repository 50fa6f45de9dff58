"""Studies (/api/v1/studies): one row per study name with its spec and its cells' job records.

The records are written by whoever advances the study (service/studies.py); a study is `active`
while the background pass has to read it: some cell is neither done nor stopped, or it was
cancelled (`cancelled_at`) and one of its jobs is still in flight. So a finished study, and a
cancelled one once its jobs have stopped, costs nothing.

Several API processes advance the same studies, so a write of the records is a compare-and-set
on the cancel state the writer read: a pass that read a running study cannot save over a cancel
made since (nor a cancelled study's refresh over a retry). And a job a pass submits or resumes
is stored only in a transaction that finds the study not cancelled (`hold_study_open`), so no
job of a cancelled study ever becomes claimable."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.orm import Session, defer

from service.db.base import RepoBase
from service.db.errors import StudyCancelled, StudyNotFound
from service.db.models import Job, Study, utcnow


def hold_study_open(s: Session | Connection, name: str) -> None:
    """Inside the transaction that queues a job of study `name`: raise StudyCancelled unless the
    study exists and is not cancelled, and keep it so until that transaction ends. Postgres: a
    share lock on the study's row, which the cancel's UPDATE (`cancel_study`) waits for, and
    which itself waits for a cancel not yet committed and then reads it. SQLite: the transaction
    holds the database's one write lock (BEGIN IMMEDIATE), so no cancel commits in between."""
    row = s.execute(select(Study.cancelled_at).where(Study.name == name).with_for_update(read=True)).first()
    if row is None or row.cancelled_at is not None:
        raise StudyCancelled(name)


class StudyRepo(RepoBase):
    def put_study(self, name: str, spec: dict[str, Any]) -> tuple[Study, bool]:
        """Store a new study, or replace the spec of the study of that name (its records stay:
        unchanged cells replay their jobs). (the row, created)."""
        now = utcnow()
        with self.db.write() as s:
            row = s.get(Study, name, with_for_update=True)
            created = row is None
            if created:
                row = Study(name=name, spec=spec, cells={}, active=True, created_at=now, updated_at=now)
                s.add(row)
            elif row.spec != spec:
                row.spec, row.active, row.updated_at = spec, True, now
            s.flush()
            s.expunge(row)
            return row, created

    def study(self, name: str) -> Study:
        with self.db.read() as s:
            row = s.get(Study, name)
            if row is None:
                raise StudyNotFound(name)
            s.expunge(row)
            return row

    def studies(self, limit: int = 200) -> list[Study]:
        """Newest first."""
        stmt = select(Study).order_by(Study.created_at.desc()).limit(limit)
        with self.db.read() as s:
            rows = list(s.execute(stmt).scalars())
            s.expunge_all()
            return rows

    def active_study_names(self) -> list[str]:
        with self.db.read() as s:
            return list(s.execute(select(Study.name).where(Study.active).order_by(Study.name)).scalars())

    def save_study_cells(self, name: str, cells: dict[str, Any], active: bool,
                         cancelled_at: dt.datetime | None) -> bool:
        """Write the records if the study's cancel state is still `cancelled_at` (as the caller
        read it), in one conditional UPDATE; False when it changed since (or the study is gone)."""
        column = Study.cancelled_at
        unchanged = column.is_(None) if cancelled_at is None else column == cancelled_at
        with self.db.write() as s:
            done = s.execute(update(Study).where(Study.name == name, unchanged)
                             .values(cells=cells, active=active, updated_at=utcnow()))
            return done.rowcount == 1

    def cancel_study(self, name: str) -> dt.datetime:
        """Store the cancel (once: a cancelled study keeps its first time); when it was cancelled."""
        now = utcnow()
        with self.db.write() as s:
            s.execute(update(Study).where(Study.name == name, Study.cancelled_at.is_(None))
                      .values(cancelled_at=now, updated_at=now))
            cancelled_at = s.execute(select(Study.cancelled_at).where(Study.name == name)).first()
            if cancelled_at is None:
                raise StudyNotFound(name)
            return cancelled_at[0]

    def resume_study(self, name: str) -> None:
        """A retry: the cancel is cleared, and the background pass takes the study up again."""
        with self.db.write() as s:
            s.execute(update(Study).where(Study.name == name, Study.cancelled_at.is_not(None))
                      .values(cancelled_at=None, active=True, updated_at=utcnow()))

    def delete_study(self, name: str) -> None:
        """The study's row only: its jobs are the job repository's (listed and deleted under /jobs)."""
        with self.db.write() as s:
            if s.execute(delete(Study).where(Study.name == name)).rowcount == 0:
                raise StudyNotFound(name)

    def job_rows(self, ids: Iterable[str], evaluation: bool = False) -> dict[str, Job]:
        """The jobs of these ids (those that still exist), in one query; the spec is not loaded."""
        ids = list(set(ids))
        if not ids:
            return {}
        deferred = [defer(Job.spec)] + ([] if evaluation else [defer(Job.evaluation)])
        with self.db.read() as s:
            rows = list(s.execute(select(Job).options(*deferred).where(Job.id.in_(ids))).scalars())
            s.expunge_all()
            return {row.id: row for row in rows}
