"""Response models of the REST API (the request body is sgmim.spec's JobSpec)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.db.base import clean_text, finite_or_none
from service.db.models import Checkpoint, Job, LogLine
from service.db.organise import unpack_tags
from service.openapi import NO_NUL
from sgmim.spec.job import TAG_PATTERN
from sgmim.status import JobStatus

JobKind = Literal["pretrain", "finetune", "evaluate"]


class Progress(BaseModel):
    step: int | None = Field(None, description="last optimiser step reported")
    total_steps: int | None = None
    epoch: float | None = None


class JobSummary(BaseModel):
    """A job as listed (no spec)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "01jd8x2k7m3qf5ab",
                    "kind": "pretrain",
                    "name": "swin-b-nyu",
                    "status": "running",
                    "parent_id": None,
                    "priority": 5,
                    "queue": "sgmim",
                    "attempt": 1,
                    "max_restarts": 2,
                    "restarts": 0,
                    "worker": "gpu-box-1",
                    "progress": {"step": 1200, "total_steps": 50000, "epoch": 2.4},
                    "error": None,
                    "last_metrics": {"loss": 0.41, "lr": 0.0002},
                    "created_at": "2026-11-26T10:00:00Z",
                    "updated_at": "2026-11-26T10:20:00Z",
                    "started_at": "2026-11-26T10:00:03Z",
                    "finished_at": None,
                    "heartbeat_at": "2026-11-26T10:20:00Z",
                }
            ]
        }
    )

    id: str
    kind: JobKind
    name: str
    status: JobStatus
    parent_id: str | None = None
    priority: int
    queue: str
    attempt: int = Field(description="claims so far (0: never started)")
    max_restarts: int
    restarts: int = Field(description="automatic requeues after a lost worker since submit/resume")
    worker: str | None = None
    progress: Progress
    error: str | None = None
    last_metrics: dict[str, float | None] | None = Field(
        None, description="latest value of each metric (null: NaN/inf)"
    )
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    tags: list[str] = Field(default_factory=list)
    note: str | None = None
    archived_at: dt.datetime | None = None
    disk_bytes: int | None = Field(None, description="bytes the job's run directory takes on disk")
    notify_state: str | None = Field(
        None, description="webhook of the last terminal state: pending, sent, failed or none (no URL)")

    @classmethod
    def from_row(cls, job: Job) -> JobSummary:
        return cls(**_summary_fields(job))


class JobOut(JobSummary):
    """A job with its validated spec."""

    spec: dict[str, Any] = Field(description="the validated job spec (JobSpec), defaults filled in")
    parent_checkpoint: str | None = None
    cancel_requested_at: dt.datetime | None = None

    @classmethod
    def from_row(cls, job: Job) -> JobOut:
        return cls(
            **_summary_fields(job),
            spec=job.spec,
            parent_checkpoint=job.parent_checkpoint,
            cancel_requested_at=job.cancel_requested_at,
        )


def _summary_fields(job: Job) -> dict[str, Any]:
    last = job.last_metrics
    return dict(
        id=job.id,
        kind=job.kind,
        name=job.name,
        status=job.status,
        parent_id=job.parent_id,
        priority=job.priority,
        queue=job.queue,
        attempt=job.attempt,
        max_restarts=job.max_restarts,
        restarts=job.restarts,
        worker=job.worker,
        progress=Progress(step=job.step, total_steps=job.total_steps, epoch=job.epoch),
        error=job.error,
        last_metrics={k: finite_or_none(v) for k, v in last.items()} if last else None,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        tags=unpack_tags(job.tags),
        note=job.note,
        archived_at=job.archived_at,
        notify_state=job.notify_state,
    )


class JobPatch(BaseModel):
    """Tags and notes change at any time; archiving hides a job from lists without deleting it."""

    # strict: `archived` is a JSON boolean, not 0 or "yes"
    model_config = ConfigDict(extra="forbid", strict=True)

    add_tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] = Field(default_factory=list, max_length=32)
    remove_tags: list[Annotated[str, Field(pattern=TAG_PATTERN)]] = Field(default_factory=list, max_length=32)
    note: Annotated[str, Field(max_length=4096, json_schema_extra={"pattern": NO_NUL})] | None = Field(
        None, description="replaces the note; '' clears it")  # the pattern: checked by _storable
    archived: bool | None = None

    @field_validator("note")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        """Text Postgres can store: no NUL, valid UTF-8."""
        if value is not None and ("\x00" in value or clean_text(value) != value):
            raise ValueError("the note contains a NUL character or invalid Unicode")
        return value


class DeleteOut(BaseModel):
    deleted: bool = Field(description="false: the job has children, so its row and export stay "
                                      "(archived); everything else was removed")
    kept: list[str] = Field(description="files kept, relative to the run directory")
    freed_bytes: int
    children: list[str] = Field(default_factory=list)


class PruneOut(BaseModel):
    removed: list[str]
    kept: list[str]
    freed_bytes: int


class JobList(BaseModel):
    items: list[JobSummary]
    next_cursor: str | None = Field(
        None, description="pass as ?cursor= for the next (older) page; null on the last page"
    )


class MetricPoint(BaseModel):
    seq: int = Field(description="position in the job's event sequence (SSE event id)")
    step: int | None = None
    epoch: float | None = None
    name: str
    value: float | None = Field(description="null: NaN or infinite")
    time: float = Field(description="unix time, seconds")
    attempt: int | None = Field(None, description="the attempt that wrote the point")

    @classmethod
    def from_row(cls, m: Any) -> MetricPoint:
        return cls.model_construct(
            seq=m.seq, step=m.step, epoch=m.epoch, name=m.name, value=finite_or_none(m.value), time=m.time,
            attempt=m.attempt,
        )


class MetricPage(BaseModel):
    items: list[MetricPoint]
    next_after: int | None = Field(
        None, description="pass as ?after= for the next page; null when this page was not full"
    )


class CurveOut(BaseModel):
    steps: list[int]
    values: list[float | None] = Field(description="the value at each step, or the bucket's mean")
    low: list[float | None] | None = Field(None, description="each bucket's minimum (downsampled only)")
    high: list[float | None] | None = Field(None, description="each bucket's maximum (downsampled only)")
    points: int = Field(description="stored points the curve stands for")
    downsampled: bool


class SeriesOut(BaseModel):
    status: JobStatus
    last_seq: int = Field(description="the curves hold every point up to this sequence number")
    curves: dict[str, CurveOut]


class LogLineOut(BaseModel):
    seq: int
    time: float
    line: str

    @classmethod
    def from_row(cls, row: LogLine) -> LogLineOut:
        return cls(seq=row.seq, time=row.time, line=row.line)


class LogsOut(BaseModel):
    lines: list[LogLineOut] = Field(description="the last `tail` lines, oldest first")


class CheckpointOut(BaseModel):
    name: str
    kind: Literal["deepspeed", "encoder", "model"] = Field(
        description="deepspeed: a DeepSpeed tag folder (downloaded as a tar); encoder: a pretraining "
        "job's exported fp32 encoder; model: a fine-tuning job's exported model, encoder and head "
        "(both safetensors, Range supported)"
    )
    step: int | None = None
    size_bytes: int
    created_at: dt.datetime

    @classmethod
    def from_row(cls, row: Checkpoint) -> CheckpointOut:
        return cls(
            name=row.name, kind=row.kind, step=row.step, size_bytes=row.size_bytes, created_at=row.created_at
        )


class CheckpointList(BaseModel):
    items: list[CheckpointOut]


class ErrorOut(BaseModel):
    detail: str | list[Any] | dict[str, Any]


class FieldErrorOut(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ConflictOut(BaseModel):
    detail: str | list[FieldErrorOut] = Field(
        description="what conflicts; for a parent problem, the field path and why")
    status: JobStatus | None = Field(None, description="the job's current status")
    job_id: str | None = None


class ValidationErrorOut(BaseModel):
    detail: list[FieldErrorOut]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
