"""/api/v1/jobs/{id}/metrics: metric points by name, paginated by sequence number."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import RepoDep
from service.routes.common import AUTH, INVALID, NAMES_PATTERN, NOT_FOUND, JobIdDep
from service.schemas import MetricPage, MetricPoint

router = APIRouter(prefix="/jobs", tags=["metrics"], responses=AUTH)

MAX_SEQ = 2**62


@router.get(
    "/{job_id}/metrics",
    response_model=MetricPage,
    summary="Metric points",
    responses={**NOT_FOUND, **INVALID},
)
def get_metrics(
    job_id: JobIdDep,
    repo: RepoDep,
    names: Annotated[
        str | None,
        Query(
            max_length=4096,
            pattern=NAMES_PATTERN,
            description="comma-separated metric names of at most 128 characters (default: all)",
            examples=["loss,lr"],
        ),
    ] = None,
    after: Annotated[int, Query(ge=0, le=MAX_SEQ, description="only points with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    attempt: Annotated[
        str,
        Query(
            pattern=r"^(latest|all|[0-9]{1,9})$",
            description="latest: the latest attempt's timeline (a resumed attempt restarts at its "
            "checkpoint; an earlier attempt's points from there on are left out); all: every "
            "point; N: attempt N's",
        ),
    ] = "latest",
) -> MetricPage:
    """Points in sequence order, `limit` at a time: page with `after=next_after`. The sequence
    numbers are the ones of the SSE stream."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    rows = repo.metrics(job_id, names=wanted, after=after, limit=limit, attempt=attempt)
    items = [MetricPoint.from_row(r) for r in rows]
    return MetricPage(items=items, next_after=items[-1].seq if len(items) == limit else None)
