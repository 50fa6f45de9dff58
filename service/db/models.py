"""SQLAlchemy 2.0 typed models.

One append-only event sequence per job: `jobs.last_seq` is the counter, and the three event
tables (`status_events`, `metrics`, `log_lines`) share it, so `(job_id, seq)` orders every
status change, metric point and log line of a job. A writer allocates its numbers with one
`UPDATE jobs SET last_seq = last_seq + n ... RETURNING last_seq` inside the transaction that
inserts the rows. The row lock (Postgres) or the write lock (SQLite, BEGIN IMMEDIATE) is held
until commit, so transactions of one job commit in sequence order: a reader that has seen
`seq = N` has seen every event below N. That is what makes SSE resume exactly-once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Names for constraints so that migrations are deterministic on both dialects.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on both dialects (SQLite returns naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC) if value is not None else None

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    parent_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("jobs.id"), index=True)
    parent_checkpoint: Mapped[str | None] = mapped_column(String(256))
    priority: Mapped[int] = mapped_column(Integer)
    max_restarts: Mapped[int] = mapped_column(Integer)
    restarts: Mapped[int] = mapped_column(Integer, default=0, doc="reaper requeues since submit/resume")
    attempt: Mapped[int] = mapped_column(Integer, default=0, doc="claims so far; 0 = never started")
    worker: Mapped[str | None] = mapped_column(String(255))
    queue: Mapped[str] = mapped_column(String(128))
    nodes: Mapped[int] = mapped_column(Integer, default=1, doc="resources.nodes: > 1 is placed as a gang")
    step: Mapped[int | None] = mapped_column(BigInteger)
    total_steps: Mapped[int | None] = mapped_column(BigInteger)
    epoch: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    last_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    cancel_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    tags: Mapped[str] = mapped_column(
        Text, default="", doc="',a,b,': a LIKE '%,a,%' finds a tag on both dialects"
    )
    note: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), doc="hidden from lists when set")
    webhook_url: Mapped[str | None] = mapped_column(Text, doc="the spec's webhook (else the global setting)")
    notify_state: Mapped[str | None] = mapped_column(
        String(16), index=True, doc="pending (a terminal state to announce), sent, failed, none (no URL)"
    )
    notify_attempts: Mapped[int] = mapped_column(Integer, default=0)
    notify_next_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_kind_id", "kind", "id"),
    )


class Attempt(Base):
    """One claim of a job by a worker."""

    __tablename__ = "attempts"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), doc="running, then the attempt's outcome")
    error: Mapped[str | None] = mapped_column(Text)


class StatusEvent(Base):
    __tablename__ = "status_events"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    time: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    previous: Mapped[str | None] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)


class Metric(Base):
    __tablename__ = "metrics"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    step: Mapped[int | None] = mapped_column(BigInteger)
    epoch: Mapped[float | None] = mapped_column(Float)
    value: Mapped[float | None] = mapped_column(Float, doc="NULL stands for NaN/inf")
    time: Mapped[float] = mapped_column(Float)
    attempt: Mapped[int | None] = mapped_column(
        Integer, doc="the attempt that wrote the point (NULL: recorded before migration 0003)")

    __table_args__ = (Index("ix_metrics_job_name_seq", "job_id", "name", "seq"),)


class LogLine(Base):
    __tablename__ = "log_lines"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    time: Mapped[float] = mapped_column(Float)
    line: Mapped[str] = mapped_column(Text)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), doc="deepspeed (a tag folder), encoder or model (a file)")
    step: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(Text, doc="relative to the run directory")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True, doc="sha256 of the key")
    body_hash: Mapped[str] = mapped_column(String(64), doc="sha256 of the canonical JSON body")
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True, doc="sha256 of the token")
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Worker(Base):
    """A registered worker (one Celery node): written by the worker itself at start and by its
    heartbeat thread; a row whose heartbeat is older than `stale_heartbeat_s` is a gone worker."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True, doc="the Celery node name")
    host: Mapped[str] = mapped_column(String(255), index=True, doc="the box's identity (one per box)")
    address: Mapped[str] = mapped_column(String(255), doc="where the other nodes' ranks reach this box")
    gpus: Mapped[int] = mapped_column(Integer, doc="visible GPUs (0: a CPU-only worker)")
    gpu_types: Mapped[list[str]] = mapped_column(JSONType, doc="GPU types it serves (from its queues)")
    queues: Mapped[list[str]] = mapped_column(JSONType)
    job_id: Mapped[str | None] = mapped_column(String(32), doc="the job it runs or is reserved for")
    attempt: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JobNode(Base):
    """One node of a multi-node attempt: which worker runs node rank r, and how far it got
    (reserved -> running -> exited | stopped | lost)."""

    __tablename__ = "job_nodes"

    job_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str] = mapped_column(String(255))
    host: Mapped[str] = mapped_column(String(255))
    address: Mapped[str] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer, doc="node 0: the rendezvous port, once chosen")
    status: Mapped[str] = mapped_column(String(16))
    exit_code: Mapped[int | None] = mapped_column(Integer)
    reserved_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class Study(Base):
    """A study posted to /api/v1/studies: its spec (base jobs inline) and, per cell, the jobs of
    its chain (`cells`: cell id → {row, seed, jobs: stage → {id, key, status}}, the records of
    sgmim.study.chains). The service advances the active ones (service/studies.py); a cancelled
    one (`cancelled_at`) only has its jobs' statuses refreshed until none is in flight."""

    __tablename__ = "studies"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSONType, doc="the study as posted (base jobs inline)")
    cells: Mapped[dict[str, Any]] = mapped_column(JSONType)
    active: Mapped[bool] = mapped_column(Boolean, index=True, doc="the background pass reads it: some cell "
                                         "neither done nor stopped, or (cancelled) some job still in flight")
    cancelled_at: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime(), doc="set by a cancel, cleared by a retry: nothing is submitted for it meanwhile")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
