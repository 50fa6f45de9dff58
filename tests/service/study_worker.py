"""Playing the worker for a study's cells through the repository (no training): the tests whose
property is the service's handling of studies (routes, dashboard) use it."""

from __future__ import annotations

import json
from typing import Any

from service.db.repo import JobRepo
from service.settings import Settings

Reported = dict[tuple[str, int], tuple[float, float]]  # (row, seed) → (rmse, delta1)


def finish_due(repo: JobRepo, settings: Settings, study: dict, stage: str, reported: Reported,
               fail: frozenset[str] = frozenset()) -> None:
    """Claim and finish each cell's queued job of `stage` (`study`: GET /studies/{name}).
    Evaluation jobs write eval.json with rmse and delta1 from `reported[(row, seed)]` (and abs_rel
    = rmse / 4), and record it for seed 0 only: the service must read the others' files."""
    for cell in study["cells"]:
        job_id = cell["stages"][stage]["job_id"]
        if cell["stages"][stage]["status"] != "queued":
            continue
        attempt = repo.claim_job(job_id, "test-worker")
        assert attempt is not None, f"{job_id} could not be claimed"
        if stage == "evaluate":
            rmse, delta1 = reported[(cell["row"], cell["seed"])]
            evaluation: dict[str, Any] = {"task": "depth",
                                          "metrics": {"rmse": rmse, "abs_rel": rmse / 4, "delta1": delta1}}
            run = settings.run_dir(job_id)
            run.mkdir(parents=True, exist_ok=True)
            (run / "eval.json").write_text(json.dumps(evaluation))
            if cell["seed"] == 0:
                repo.set_evaluation(job_id, evaluation)
        outcome = "failed" if cell["id"] in fail else "succeeded"
        assert repo.finish_job(job_id, attempt, outcome, "boom" if outcome == "failed" else None)
