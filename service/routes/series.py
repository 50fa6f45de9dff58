"""/api/v1/jobs/{id}/series: metric curves for display, downsampled on the server."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.deps import RepoDep
from service.routes.common import AUTH, INVALID, NAMES_PATTERN, NOT_FOUND, JobIdDep
from service.schemas import CurveOut, SeriesOut

router = APIRouter(prefix="/jobs", tags=["metrics"], responses=AUTH)


@router.get(
    "/{job_id}/series",
    response_model=SeriesOut,
    summary="Metric curves for display (downsampled)",
    responses={**NOT_FOUND, **INVALID},
)
def get_series(
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
    points: Annotated[int, Query(ge=10, le=10_000, description="at most this many points per curve")] = 1000,
) -> SeriesOut:
    """Each metric by step. A curve longer than `points` is averaged over equal step buckets
    (`low` / `high`: each bucket's min and max); shorter ones come whole (a step logged twice
    keeps its latest value). `last_seq`: the curves hold every point up to this sequence number;
    follow on with the SSE stream `events?after=<last_seq>`. Every point: `/metrics`."""
    wanted = [n.strip() for n in names.split(",") if n.strip()] if names else None
    found = repo.series(job_id, wanted, points)
    return SeriesOut(
        status=found.status,
        last_seq=found.last_seq,
        curves={
            name: CurveOut(
                steps=c.steps,
                values=c.values,
                low=c.low,
                high=c.high,
                points=c.points,
                downsampled=c.low is not None,
            )
            for name, c in found.curves.items()
        },
    )
