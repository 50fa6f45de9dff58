"""A job's event stream: status events, metric points and log lines under one sequence, and
the reads the API serves from it (metrics, SSE events, the log tail)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from service.db.base import RepoBase, bulk_insert, clean_text, finite_or_none, now_ts
from service.db.errors import JobNotFound
from service.db.models import Job, LogLine, Metric, StatusEvent

MAX_LOG_LINE = 16_384
MAX_METRIC_NAME = 128
_METRIC_COLUMNS = ("job_id", "seq", "name", "step", "epoch", "value", "time", "attempt")
_LOG_COLUMNS = ("job_id", "seq", "time", "line")


@dataclass
class Event:
    """One entry of a job's sequence: type 'status', 'metric' or 'log'."""

    seq: int
    type: str
    data: dict[str, Any]


@dataclass
class EventBatch:
    events: list[Event]
    status: str
    last_seq: int


@dataclass
class Curve:
    """One metric by step; `low`/`high`: each bucket's min and max when it was downsampled."""

    steps: list[int]
    values: list[float | None]
    low: list[float | None] | None
    high: list[float | None] | None
    points: int  # stored points it stands for


@dataclass
class MetricSeries:
    status: str
    last_seq: int
    curves: dict[str, Curve]



class EventRepo(RepoBase):
    """Appends (the worker) and reads (the API) of a job's events."""

    def metrics(
        self,
        job_id: str,
        *,
        names: Sequence[str] | None = None,
        after: int = 0,
        limit: int = 1000,
        attempt: int | str = "latest",
    ) -> list[Any]:
        """Points with seq > after in order: rows with .seq .step .epoch .name .value .time
        .attempt. `attempt`: "latest" gives the latest attempt's timeline (see
        `_superseded_filter`), "all" every point, a number that attempt's."""
        stmt = select(
            Metric.seq, Metric.step, Metric.epoch, Metric.name, Metric.value, Metric.time, Metric.attempt
        ).where(Metric.job_id == job_id, Metric.seq > after)
        if names:
            stmt = stmt.where(Metric.name.in_(list(names)))
        with self.db.read() as s:
            self._require(s, job_id)
            if attempt == "latest":
                stmt = stmt.where(*self._superseded_filter(s, job_id))
            elif attempt != "all":
                stmt = stmt.where(Metric.attempt == int(attempt))
            return list(s.execute(stmt.order_by(Metric.seq).limit(limit)))

    def _superseded_filter(self, s: Session, job_id: str) -> list[Any]:
        """Conditions leaving out the points a later attempt superseded: a resumed attempt
        restarts at its checkpoint, so for each metric the points of an earlier attempt from the
        first step a later attempt wrote onwards belong to an abandoned timeline. Nothing to
        filter (no query) while only one attempt wrote points."""
        attempts = s.execute(select(Job.attempt).where(Job.id == job_id)).scalar_one()
        if (attempts or 0) <= 1:
            return []
        first_steps = [
            (attempt or 0, name, step)
            for attempt, name, step in s.execute(
                select(Metric.attempt, Metric.name, func.min(Metric.step))
                .where(Metric.job_id == job_id, Metric.step.is_not(None))
                .group_by(Metric.attempt, Metric.name)
            )
        ]
        cut: dict[tuple[int, str], int] = {}
        for attempt, name, step in first_steps:
            for earlier, other, _ in first_steps:
                if other == name and earlier < attempt:
                    key = (earlier, name)
                    cut[key] = min(cut.get(key, step), step)
        if not cut:
            return []
        return [
            ~or_(
                *(
                    and_(func.coalesce(Metric.attempt, 0) == attempt, Metric.name == name,
                         Metric.step.is_not(None), Metric.step >= step)
                    for (attempt, name), step in cut.items()
                )
            )
        ]

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> EventBatch:
        """Events with `after < seq <= last_seq`, in order.

        `last_seq` is read first: every event up to it has committed (it is written in the same
        transaction as the events), so reading each table up to that bound never skips an event,
        whatever each statement's snapshot is.
        """
        with self.db.read() as s:
            status, last = self._require(s, job_id)
            if after >= last:
                return EventBatch([], status, last)
            bounds = (after, last)
            events: list[Event] = []
            for row in s.execute(
                select(StatusEvent)
                .where(
                    StatusEvent.job_id == job_id, StatusEvent.seq > bounds[0], StatusEvent.seq <= bounds[1]
                )
                .order_by(StatusEvent.seq)
                .limit(limit)
            ).scalars():
                events.append(
                    Event(
                        row.seq,
                        "status",
                        {
                            "status": row.status,
                            "previous": row.previous,
                            "attempt": row.attempt,
                            "error": row.error,
                            "time": row.time,
                        },
                    )
                )
            for row in s.execute(
                select(Metric)
                .where(Metric.job_id == job_id, Metric.seq > bounds[0], Metric.seq <= bounds[1])
                .order_by(Metric.seq)
                .limit(limit)
            ).scalars():
                events.append(
                    Event(
                        row.seq,
                        "metric",
                        {
                            "step": row.step,
                            "epoch": row.epoch,
                            "name": row.name,
                            "value": finite_or_none(row.value),
                            "time": row.time,
                            "attempt": row.attempt,
                        },
                    )
                )
            for row in s.execute(
                select(LogLine)
                .where(LogLine.job_id == job_id, LogLine.seq > bounds[0], LogLine.seq <= bounds[1])
                .order_by(LogLine.seq)
                .limit(limit)
            ).scalars():
                events.append(Event(row.seq, "log", {"line": row.line, "time": row.time}))
            events.sort(key=lambda e: e.seq)
            return EventBatch(events[:limit], status, last)

    def logs_tail(self, job_id: str, n: int = 100) -> list[LogLine]:
        with self.db.read() as s:
            self._require(s, job_id)
            rows = list(
                s.execute(
                    select(LogLine).where(LogLine.job_id == job_id).order_by(LogLine.seq.desc()).limit(n)
                ).scalars()
            )
            s.expunge_all()
            return rows[::-1]

    def append_metrics(self, job_id: str, points: Iterable[dict[str, Any]]) -> int:
        """Insert a batch of points `{name, value, step, epoch, time}` (one transaction, chunked
        multi-row inserts); updates the job's last_metrics and progress. Returns the last seq.
        Non-finite values are stored as NULL."""
        rows: list[dict[str, Any]] = []
        now = now_ts()
        for p in points:
            name = p.get("name")
            if (
                not isinstance(name, str)
                or not name
                or len(name) > MAX_METRIC_NAME
                or clean_text(name) != name
            ):
                raise ValueError(f"metric point needs a name of 1..{MAX_METRIC_NAME} characters: {p!r}")
            rows.append(
                {
                    "job_id": job_id,
                    "name": name,
                    "value": finite_or_none(p.get("value")),
                    "step": None if p.get("step") is None else int(p["step"]),
                    "epoch": None if p.get("epoch") is None else float(p["epoch"]),
                    "time": float(p["time"]) if p.get("time") is not None else now,
                }
            )
        if not rows:
            return self._last_seq(job_id)
        latest: dict[str, float | None] = {}
        max_step = max((r["step"] for r in rows if r["step"] is not None), default=None)
        max_epoch = max((r["epoch"] for r in rows if r["epoch"] is not None), default=None)
        for r in rows:
            latest[r["name"]] = r["value"]
        with self.db.write() as s:
            cur = s.execute(
                select(Job.last_seq, Job.last_metrics, Job.step, Job.epoch, Job.attempt)
                .where(Job.id == job_id)
                .with_for_update()
            ).one_or_none()
            if cur is None:
                raise JobNotFound(job_id)
            first = int(cur.last_seq) + 1
            for i, r in enumerate(rows):
                r["seq"], r["attempt"] = first + i, cur.attempt or None
            merged = dict(cur.last_metrics or {})
            merged.update(latest)
            values: dict[str, Any] = {"last_seq": first + len(rows) - 1, "last_metrics": merged}
            if max_step is not None and (cur.step is None or max_step > cur.step):
                values["step"] = max_step
            if max_epoch is not None and (cur.epoch is None or max_epoch > cur.epoch):
                values["epoch"] = max_epoch
            s.execute(update(Job).where(Job.id == job_id).values(**values))
            bulk_insert(s, Metric.__table__.name, _METRIC_COLUMNS, rows)
            return values["last_seq"]

    def append_logs(self, job_id: str, lines: Iterable[str]) -> int:
        """Append log lines (trailing newline stripped, each cut to 16 KiB). Returns the last seq."""
        now = now_ts()
        batch = [clean_text(line.rstrip("\r\n")[:MAX_LOG_LINE]) for line in lines]
        if not batch:
            return self._last_seq(job_id)
        with self.db.write() as s:
            last = self._next_seq(s, job_id, len(batch))
            first = last - len(batch) + 1
            rows = [
                {"job_id": job_id, "seq": first + i, "time": now, "line": line}
                for i, line in enumerate(batch)
            ]
            bulk_insert(s, LogLine.__table__.name, _LOG_COLUMNS, rows)
            return last

    def series(self, job_id: str, names: Sequence[str] | None, max_points: int) -> MetricSeries:
        """The job's metric curves by step for display, at most `max_points` points per name.

        A longer curve is averaged over equal step buckets in the database (with each bucket's
        min and max), so a 100,000-point curve never leaves it whole. Only points up to the
        returned `last_seq` are included: a live view continues with the events after it."""
        with self.db.read() as s:
            status, last_seq = self._require(s, job_id)
            base = [Metric.job_id == job_id, Metric.seq <= last_seq, Metric.step.is_not(None)]
            if names:
                base.append(Metric.name.in_(list(names)))
            stats = s.execute(
                select(Metric.name, func.count(), func.min(Metric.step), func.max(Metric.step))
                .where(*base)
                .group_by(Metric.name)
                .order_by(Metric.name)
            ).all()
            curves = {}
            for name, count, lo, hi in stats:
                where = [*base, Metric.name == name]
                if count <= max_points:
                    curves[name] = self._full_curve(s, where, int(count))
                else:
                    curves[name] = self._bucketed_curve(s, where, int(lo), int(hi), int(count), max_points)
            return MetricSeries(status, last_seq, curves)

    @staticmethod
    def _full_curve(s: Session, where: list[Any], count: int) -> Curve:
        by_step: dict[int, float | None] = {}
        for step, value in s.execute(select(Metric.step, Metric.value).where(*where).order_by(Metric.seq)):
            by_step[int(step)] = finite_or_none(value)  # a re-run step keeps its latest value
        steps = sorted(by_step)
        return Curve(steps, [by_step[k] for k in steps], None, None, count)

    @staticmethod
    def _bucketed_curve(s: Session, where: list[Any], lo: int, hi: int, count: int, max_points: int) -> Curve:
        width = max(1, math.ceil((hi - lo + 1) / max_points))
        bucket = ((Metric.step - lo) // width).label("bucket")
        rows = s.execute(
            select(
                bucket,
                func.min(Metric.step),
                func.avg(Metric.value),
                func.min(Metric.value),
                func.max(Metric.value),
            )
            .where(*where)
            .group_by(bucket)
            .order_by(bucket)
        ).all()
        return Curve(
            [int(r[1]) for r in rows],
            [finite_or_none(r[2]) for r in rows],
            [finite_or_none(r[3]) for r in rows],
            [finite_or_none(r[4]) for r in rows],
            count,
        )
