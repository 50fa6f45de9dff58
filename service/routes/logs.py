"""/api/v1/jobs/{id}/logs: the last lines of the job's log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import RepoDep
from service.routes.common import AUTH, INVALID, NOT_FOUND, JobIdDep
from service.schemas import LogLineOut, LogsOut

router = APIRouter(prefix="/jobs", tags=["logs"], responses=AUTH)


@router.get(
    "/{job_id}/logs", response_model=LogsOut, summary="Tail of the log", responses={**NOT_FOUND, **INVALID}
)
def get_logs(
    job_id: JobIdDep,
    repo: RepoDep,
    tail: Annotated[int, Query(ge=1, le=10_000, description="number of lines")] = 100,
) -> LogsOut:
    """The last `tail` lines, oldest first (follow live lines with the SSE `log` events)."""
    return LogsOut(lines=[LogLineOut.from_row(r) for r in repo.logs_tail(job_id, tail)])
