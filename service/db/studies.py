"""Studies (/api/v1/studies): one row per study name with its spec and its cells' job records.

The records are written by whoever advances the study (service/studies.py); a study is `active`
while some cell is neither done nor stopped and it was not cancelled, and only active studies are
advanced in the background, so a finished or cancelled study costs nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import defer

from service.db.base import RepoBase
from service.db.errors import StudyNotFound
from service.db.models import Job, Study, utcnow


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

    def save_study_cells(self, name: str, cells: dict[str, Any], active: bool) -> None:
        with self.db.write() as s:
            done = s.execute(update(Study).where(Study.name == name)
                             .values(cells=cells, active=active, updated_at=utcnow()))
            if done.rowcount == 0:
                raise StudyNotFound(name)

    def delete_study(self, name: str) -> None:
        """The study's row only: its jobs are the job repository's (listed and deleted under /jobs)."""
        with self.db.write() as s:
            if s.execute(delete(Study).where(Study.name == name)).rowcount == 0:
                raise StudyNotFound(name)

    def set_study_active(self, name: str) -> None:
        """A retried cell: the background advancer takes the study up again."""
        self.save_study_cells(name, self.study(name).cells, True)

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
