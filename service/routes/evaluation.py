"""/api/v1/jobs/{id}/evaluation: the job's eval.json."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service import artifacts
from service.db.base import json_safe
from service.deps import RepoDep, SettingsDep
from service.routes.common import AUTH, NOT_FOUND, JobIdDep
from sgmim import rundir

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
    path = artifacts.resolve_in_run_dir(settings.run_dir(job_id), rundir.EVAL)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict):
                return json_safe(data)
        except (OSError, ValueError):
            pass
    return JSONResponse({"detail": f"job {job_id} has no evaluation results (yet)"}, status_code=404)
