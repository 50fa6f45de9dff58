"""/api/v1/jobs/{id}/evaluation: the job's eval.json."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service import artifacts
from service.deps import RepoDep, SettingsDep
from service.routes.common import AUTH, NOT_FOUND, JobIdDep

router = APIRouter(prefix="/jobs", tags=["evaluation"], responses=AUTH)


@router.get(
    "/{job_id}/evaluation", response_model=dict[str, Any], summary="Evaluation results", responses=NOT_FOUND
)
def get_evaluation(job_id: JobIdDep, repo: RepoDep, settings: SettingsDep) -> Any:
    """What the worker recorded (task, dataset, metrics), else the run directory's eval.json;
    404 while there is none."""
    recorded = repo.evaluation(job_id)
    if recorded is not None:
        return recorded
    found = artifacts.eval_file(settings.run_dir(job_id))
    if found is not None:
        return found
    return JSONResponse({"detail": f"job {job_id} has no evaluation results (yet)"}, status_code=404)
