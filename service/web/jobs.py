"""The jobs list (`/`) and one job's page (`/jobs/{id}`)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service.db.errors import JobNotFound
from service.db.repo import JobRepo
from service.deps import RepoDep, SettingsDep
from service.routes.common import valid_job_id
from service.routes.evaluation import get_evaluation
from service.routes.jobs import CURSOR_PATTERN
from service.settings import Settings
from service.texts import safe_text
from service.web.templating import page
from sgmim.status import JobStatus

router = APIRouter(include_in_schema=False)

KINDS = ("pretrain", "finetune", "evaluate")
PAGE_SIZE = 50


@router.get("/")
def jobs_page(
    request: Request,
    repo: RepoDep,
    status: Annotated[str, Query(max_length=32)] = "",
    kind: Annotated[str, Query(max_length=32)] = "",
    q: Annotated[str, Query(max_length=128, description="part of the name")] = "",
    cursor: Annotated[str, Query(max_length=128)] = "",
    rows: Annotated[bool, Query(description="only the table rows (the page's live refresh)")] = False,
) -> Response:
    notices = []
    if status and status not in set(JobStatus):
        notices.append(f"unknown status {status!r} ignored (one of {', '.join(JobStatus)})")
        status = ""
    if kind and kind not in KINDS:
        notices.append(f"unknown kind {kind!r} ignored (one of {', '.join(KINDS)})")
        kind = ""
    if not safe_text(q, 128):
        notices.append("search text with a NUL character ignored")  # the database cannot compare it
        q = ""
    before = None
    if cursor:
        if re.fullmatch(CURSOR_PATTERN, cursor):
            before = cursor
        else:
            notices.append("that page link is not valid any more; showing the newest jobs")
            cursor = ""
    jobs = repo.list(
        status=[status] if status else None,
        kind=[kind] if kind else None,
        limit=PAGE_SIZE + 1,
        before_id=before,
        search=q.strip() or None,
    )
    more = len(jobs) > PAGE_SIZE
    jobs = jobs[:PAGE_SIZE]
    context = {
        "jobs": jobs,
        "filters": {"status": status, "kind": kind, "q": q},
        "statuses": [s.value for s in JobStatus],
        "kinds": KINDS,
        "cursor": cursor,
        "next_cursor": jobs[-1].id if more and jobs else None,
        "notices": notices,
    }
    return page(request, "job_rows.html" if rows else "jobs.html", context)


@router.get("/jobs/{job_id}")
async def job_page(request: Request, job_id: str, repo: RepoDep, settings: SettingsDep) -> Response:
    try:
        job_id = await valid_job_id(job_id)
        context = await run_in_threadpool(_job_context, repo, settings, job_id)
    except JobNotFound:
        return page(request, "not_found.html", {"what": f"job {job_id[:64]}"}, status_code=404)
    return page(request, "job.html", context)


def _job_context(repo: JobRepo, settings: Settings, job_id: str) -> dict[str, Any]:
    job = repo.get(job_id)
    evaluation = get_evaluation(job_id, repo, settings)
    return {
        "job": job,
        "spec_yaml": yaml.safe_dump(job.spec, sort_keys=False, default_flow_style=None, width=100),
        "history": repo.status_history(job_id),
        "attempts": repo.attempts(job_id),
        "checkpoints": repo.checkpoints(job_id),
        "evaluation": evaluation if isinstance(evaluation, dict) else None,
        "parent": _maybe(repo, job.parent_id),
        "children": repo.children(job_id),
    }


def _maybe(repo: JobRepo, job_id: str | None) -> Any:
    if job_id is None:
        return None
    try:
        return repo.get(job_id)
    except JobNotFound:
        return None
