"""/studies and /studies/{name}: the studies, and one study's grid of cells (each cell's stage
and status, links to its jobs) with its results table and bars (mean ± std over seeds)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.db.errors import StudyNotFound
from service.deps import StudiesDep
from service.routes.studies import study_out, valid_study_name
from service.studies import Studies
from service.study_schemas import StudySummary, recorded_state
from service.web.templating import page
from sgmim.study.results import LOWER_IS_BETTER

router = APIRouter(include_in_schema=False)


@router.get("/studies")
def studies_page(request: Request, studies: StudiesDep) -> Response:
    items = [StudySummary.from_row(s, studies.cells_of(s).spec, [recorded_state(r) for r in s.cells.values()])
             for s in studies.repo.studies()]
    return page(request, "studies.html", {"studies": items})


@router.get("/studies/{name}")
async def study_page(request: Request, name: str, studies: StudiesDep) -> Response:
    try:
        await valid_study_name(name)
        context = await run_in_threadpool(_study_context, studies, name)
    except StudyNotFound:
        return page(request, "not_found.html", {"what": f"study {name[:64]}"}, status_code=404)
    return page(request, "study.html", context)


def _study_context(studies: Studies, name: str) -> dict[str, Any]:
    row = studies.repo.study(name)
    study = study_out(studies, row)
    _, tables, _ = studies.tables(row)
    grid = {label: {} for label in study.rows}  # row → seed → cell
    for cell in study.cells:
        grid[cell.row][cell.seed] = cell
    evaluations = [c.stages["evaluate"].job_id for c in study.cells
                   if c.stage == "evaluate" and c.status == "succeeded"]
    return {
        "study": study,
        "grid": grid,
        "tables": {metric: [_finite(s) for s in stats] for metric, stats in tables.items()},
        "lower_is_better": LOWER_IS_BETTER,
        "compare_ids": ",".join(evaluations[:8]),
        "state": cells_state(study.cells),
        # a list: tojson sorts a mapping's keys, and the charts keep the study's order of metrics
        "chart": [{"metric": metric, "rows": [s.row for s in stats], "means": [_num(s.mean) for s in stats],
                   "stds": [_num(s.std) for s in stats], "seeds": [list(s.values.values()) for s in stats]}
                  for metric, stats in tables.items()],
    }


def cells_state(cells: list[Any]) -> str:
    """What study.js compares to reload the page when a cell moves on."""
    return ",".join(f"{c.id}:{c.stage}:{c.status}" for c in cells)


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _finite(stats: Any) -> dict[str, Any]:
    return {"row": stats.row, "n": stats.n, "mean": _num(stats.mean), "std": _num(stats.std),
            "diff": _num(stats.diff), "ci_low": _num(stats.ci_low), "ci_high": _num(stats.ci_high),
            "n_pairs": stats.n_pairs}
