"""/compare?jobs=A,B,...: several jobs' curves overlaid and their evaluations side by side."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.db.errors import JobNotFound
from service.db.repo import JobRepo
from service.deps import RepoDep, SettingsDep
from service.routes.evaluation import get_evaluation
from service.settings import Settings
from service.web.templating import page

router = APIRouter(include_in_schema=False)

MAX_JOBS = 8
_ID = re.compile(r"[0-9a-z]{1,32}")


@router.get("/compare")
async def compare_page(
    request: Request,
    repo: RepoDep,
    settings: SettingsDep,
    jobs: Annotated[str, Query(max_length=1024, description="comma-separated job ids")] = "",
) -> Response:
    ids = list(dict.fromkeys(j.strip() for j in jobs.replace(" ", ",").split(",") if j.strip()))
    context = await run_in_threadpool(_compare_context, repo, settings, ids)
    return page(request, "compare.html", context)


def _compare_context(repo: JobRepo, settings: Settings, ids: list[str]) -> dict[str, Any]:
    notices, found = [], []
    if len(ids) > MAX_JOBS:
        notices.append(f"only the first {MAX_JOBS} jobs are compared")
        ids = ids[:MAX_JOBS]
    for job_id in ids:
        try:
            if not _ID.fullmatch(job_id):
                raise JobNotFound(job_id)
            found.append(repo.get(job_id))
        except JobNotFound:
            notices.append(f"no job {job_id[:64]!r}")
    evaluations = [_evaluation_of(repo, settings, job) for job in found]
    names: list[str] = []
    for evaluation in evaluations:
        for name in (evaluation or {}).get("metrics", {}):
            if name not in names:
                names.append(name)
    return {
        "jobs": found,
        "ids": ",".join(j.id for j in found),
        "evaluations": evaluations,
        "metric_names": names,
        "notices": notices,
    }


def _evaluation_of(repo: JobRepo, settings: Settings, job: Any) -> dict[str, Any] | None:
    """The job's own evaluation, else the newest one among its descendants (a pretraining
    job is judged by the fine-tuning and evaluation jobs made from it), with `from_job` set."""
    own = get_evaluation(job.id, repo, settings)
    if isinstance(own, dict):
        return {**own, "from_job": None}
    frontier = [job.id]
    for _ in range(2):  # pretrain -> finetune -> evaluate
        children = [c for parent in frontier for c in repo.children(parent)]
        for child in sorted(children, key=lambda c: c.id, reverse=True):
            if child.status != "succeeded":
                continue
            found = get_evaluation(child.id, repo, settings)
            if isinstance(found, dict) and found.get("metrics"):
                return {**found, "from_job": child}
        frontier = [c.id for c in children]
    return None
