"""Response models of /api/v1/studies (the request body is sgmim.spec.study's StudySpec with its
base jobs inline)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.db.models import Job, Study
from service.schemas import Progress
from sgmim.spec.study import STAGES, StudySpec
from sgmim.status import JobStatus
from sgmim.study.chains import PENDING


class StageOut(BaseModel):
    job_id: str | None = Field(None, description="null until the stage is submitted")
    status: str = Field(description=f"the job's status, or {PENDING!r} before it is submitted")
    progress: Progress | None = None
    error: str | None = None


class CellOut(BaseModel):
    id: str = Field(description="the row's slug and the seed, e.g. sgmim-s1")
    row: str
    seed: int
    stage: str = Field(description="the stage the cell is at (evaluate once done)")
    status: str = Field(description="that stage's status: the cell is done when evaluate succeeded, "
                                    "stopped when it failed or was cancelled (retry it)")
    stages: dict[str, StageOut]


StudyState = Literal["running", "settled", "cancelling", "cancelled"]


class StudySummary(BaseModel):
    name: str
    description: str | None = None
    state: StudyState = Field(description="running: the service advances it; settled: every cell "
                                          "is done or stopped; cancelling: cancelled, some of its "
                                          "jobs still stopping; cancelled: cancelled, none in flight")
    active: bool = Field(description="the service is still advancing it (state running)")
    cancelled_at: dt.datetime | None = Field(description="when it was cancelled; null unless it is "
                                                         "(a retry clears it)")
    n_cells: int = Field(description="rows × seeds")
    done: int = Field(description="cells whose evaluation succeeded")
    stopped: int = Field(description="cells whose current job failed or was cancelled")
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, study: Study, spec: StudySpec, states: list[tuple[str, str]]) -> StudySummary:
        """states: (stage, status) of each cell that has a record."""
        return cls(name=study.name, description=spec.description, state=study_state(study),
                   active=study.active and study.cancelled_at is None, cancelled_at=study.cancelled_at,
                   n_cells=len(spec.rows()) * len(spec.seeds),
                   done=states.count((STAGES[-1], JobStatus.SUCCEEDED)),
                   stopped=sum(s in (JobStatus.FAILED, JobStatus.CANCELLED) for _, s in states),
                   created_at=study.created_at, updated_at=study.updated_at)


def study_state(study: Study) -> StudyState:
    """The stored row's `active` is whether the background pass reads it: for a cancelled study,
    whether one of its jobs was still in flight at the last pass."""
    if study.cancelled_at is not None:
        return "cancelling" if study.active else "cancelled"
    return "running" if study.active else "settled"


class StudyOut(StudySummary):
    baseline: str
    rows: list[str]
    seeds: list[int]
    metrics: list[str]
    cells: list[CellOut]
    spec: dict[str, Any] = Field(description="the study as posted")
    submitted: int | None = Field(None, description="POST and retry: the jobs this request created "
                                                    "(0 when every due job existed already)")


class StudyList(BaseModel):
    items: list[StudySummary]


class RowStatsOut(BaseModel):
    row: str
    n: int = Field(description="seeds with a result")
    mean: float | None
    std: float | None = Field(description="sample standard deviation over seeds (null below 2)")
    values: dict[str, float] = Field(description="seed → value")
    diff: float | None = Field(description="mean over shared seeds of (row − baseline)")
    ci_low: float | None = Field(description="95% confidence interval of diff, paired by seed (Student's t)")
    ci_high: float | None
    n_pairs: int


class StudyResults(BaseModel):
    study: str
    baseline: str
    confidence: float
    metrics: dict[str, list[RowStatsOut]] = Field(description="metric → one row of the table per study row")
    cells: dict[str, dict[str, Any]] = Field(description="cell id → row, seed, job ids, metrics when done")


def stage_out(record: dict | None, job: Job | None) -> StageOut:
    if record is None:
        return StageOut(status=PENDING)
    if job is None:  # deleted since
        return StageOut(job_id=record["id"], status=record["status"])
    return StageOut(job_id=job.id, status=job.status, error=job.error,
                    progress=Progress(step=job.step, total_steps=job.total_steps, epoch=job.epoch))


def cell_out(cell_id: str, row: str, seed: int, records: dict, jobs: dict[str, Job]) -> CellOut:
    stages = {stage: stage_out(records.get(stage), jobs.get((records.get(stage) or {}).get("id", "")))
              for stage in STAGES}
    stage = next((s for s in STAGES if stages[s].status != JobStatus.SUCCEEDED), STAGES[-1])
    return CellOut(id=cell_id, row=row, seed=seed, stage=stage, status=stages[stage].status, stages=stages)


def recorded_state(record: dict) -> tuple[str, str]:
    for stage in STAGES:
        job = record.get("jobs", {}).get(stage)
        if job is None or job["status"] != JobStatus.SUCCEEDED:
            return stage, job["status"] if job else PENDING
    return STAGES[-1], JobStatus.SUCCEEDED
