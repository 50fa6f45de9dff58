"""/api/v1/studies: post a study (a grid of pretrain → fine-tune → evaluate chains), follow its
cells, cancel it, retry stopped cells, read its results table (JSON, CSV, Markdown), delete it."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from service.db.errors import StudyNotFound
from service.db.models import Study
from service.deps import StudiesDep
from service.openapi import STUDY_BODY
from service.routes.common import AUTH, CONFLICT, INVALID, decode_body
from service.schemas import ConflictOut, ErrorOut
from service.studies import Advanced, Studies
from service.study_schemas import (
    StudyList,
    StudyOut,
    StudyResults,
    StudySummary,
    cell_out,
    recorded_state,
)
from sgmim.spec.study import STUDY_NAME
from sgmim.study import results

router = APIRouter(prefix="/studies", tags=["studies"], responses=AUTH)

STUDY_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such study"}}
STUDY_IN_FLIGHT: dict[int | str, dict[str, Any]] = {
    409: {"model": ConflictOut, "description": "a job of the study is still queued or running: cancel "
                                               "the study first (`job_id` and `status` name one)"}}
_NAME = re.compile(STUDY_NAME)


async def valid_study_name(
    name: Annotated[str, Path(description="the study's name", examples=["sgmim-vs-simmim-cpu"])],
) -> str:
    """A malformed name is simply not found (404)."""
    if len(name) > 64 or not _NAME.fullmatch(name):
        raise StudyNotFound(name[:64])
    return name


NameDep = Annotated[str, Depends(valid_study_name)]


@router.post(
    "",
    status_code=201,
    response_model=StudyOut,
    openapi_extra=STUDY_BODY,
    summary="Post a study",
    responses={200: {"model": StudyOut, "description": "a study of this name existed: its spec is "
                     "replaced (when it differs) and only the jobs not made before are submitted; "
                     "a cancelled one stays cancelled (`state`, `cancelled_at`) and gets nothing "
                     "submitted: `POST /studies/{name}/retry` resumes it"},
               **INVALID},
)
async def post_study(request: Request, response: Response, studies: StudiesDep) -> StudyOut:
    """Validate the study (its base jobs inline), store it and submit each cell's pretraining
    job; the service then submits each fine-tuning and evaluation job once its parent has
    succeeded. Every job carries an idempotency key per cell and stage, so posting the same
    study again submits nothing new (`submitted` counts the jobs this request created). Posting
    a cancelled study does not undo the cancel (a retry does): it stores the spec and answers
    200 with the study as it is, `state` cancelling or cancelled."""
    data = decode_body(await request.body())
    advanced, created = await run_in_threadpool(studies.post, data)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{advanced.study.name}"
    return await run_in_threadpool(study_out, studies, advanced.study, advanced.submitted)


@router.get("", response_model=StudyList, summary="List studies, newest first")
def list_studies(studies: StudiesDep) -> StudyList:
    items = []
    for study in studies.repo.studies():
        spec = studies.cells_of(study).spec
        items.append(StudySummary.from_row(study, spec, [recorded_state(r) for r in study.cells.values()]))
    return StudyList(items=items)


@router.get("/{name}", response_model=StudyOut, summary="Show a study with its cells' progress",
            responses=STUDY_NOT_FOUND)
def get_study(name: NameDep, studies: StudiesDep) -> StudyOut:
    """Each cell's stage, status and jobs, read now (submits nothing)."""
    return study_out(studies, studies.repo.study(name))


@router.post("/{name}/retry", response_model=StudyOut, summary="Retry stopped cells",
             responses={**STUDY_NOT_FOUND, **CONFLICT, **INVALID})
def retry_study(
    name: NameDep,
    studies: StudiesDep,
    cell: Annotated[list[str] | None, Query(description="a cell id (repeatable); default: every "
                                                        "failed or cancelled cell")] = None,
) -> StudyOut:
    """Resume the failed or cancelled job of these cells (the next attempt continues from its
    latest checkpoint) and carry their chains on; other cells are left alone. A cancelled study's
    cancel is cleared (`cancelled_at` null): the service advances it again."""
    advanced: Advanced = studies.advance(name, retry=cell or [])
    return study_out(studies, advanced.study, advanced.submitted)


@router.post("/{name}/cancel", response_model=StudyOut, summary="Cancel a study",
             responses=STUDY_NOT_FOUND)
def cancel_study(name: NameDep, studies: StudiesDep) -> StudyOut:
    """Store the cancel (`cancelled_at`, kept by every API process) and cancel every job of its
    cells that is still queued or running: nothing more is submitted for it and its cells stop
    where they are, until `POST /studies/{name}/retry` resumes them. A running job is
    `cancelling` until its worker has stopped it, the study's `state` cancelling meanwhile (the
    service still reads its jobs' statuses), then cancelled. Cancelling a study that is
    cancelled or finished already changes nothing."""
    return study_out(studies, studies.cancel(name))


@router.delete("/{name}", status_code=204, response_class=Response, summary="Delete a study",
               responses={204: {"description": "deleted"}, **STUDY_NOT_FOUND, **STUDY_IN_FLIGHT})
def delete_study(name: NameDep, studies: StudiesDep) -> Response:
    """Forget the study and its results table; its jobs stay (listed and deleted under /jobs).
    Refused (409) while one of its jobs is queued or running: cancel the study first."""
    studies.delete(name)
    return Response(status_code=204)


@router.get("/{name}/results", response_model=StudyResults, summary="The study's results table",
            responses=STUDY_NOT_FOUND)
def get_results(name: NameDep, studies: StudiesDep) -> Any:
    """Per metric and row over the done cells: mean ± sample standard deviation over seeds, n,
    and the difference to the baseline row with a 95% confidence interval paired by seed. The
    same JSON as `sgmim study run` writes to results.json."""
    spec, tables, cells = studies.tables(studies.repo.study(name))
    return json.loads(results.to_json(spec.name, spec.baseline_label(), tables, cells))


def _text(media_type: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"description": "the table", "content": {media_type: {"schema": {"type": "string"}}}},
            **STUDY_NOT_FOUND}


@router.get("/{name}/results.csv", response_class=Response, summary="The results table as CSV",
            responses=_text("text/csv"))
def get_results_csv(name: NameDep, studies: StudiesDep) -> Response:
    _, tables, _ = studies.tables(studies.repo.study(name))
    return PlainTextResponse(results.to_csv(tables), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


@router.get("/{name}/results.md", response_class=Response, summary="The results table as Markdown",
            responses=_text("text/markdown"))
def get_results_markdown(name: NameDep, studies: StudiesDep) -> Response:
    spec, tables, _ = studies.tables(studies.repo.study(name))
    return PlainTextResponse(results.markdown(spec.name, spec.baseline_label(), tables),
                             media_type="text/markdown; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{name}.md"'})


def study_out(studies: Studies, study: Study, submitted: int | None = None) -> StudyOut:
    loaded = studies.cells_of(study)
    jobs = studies.cell_jobs(study)
    cells = [cell_out(c.id, c.row, c.seed, study.cells.get(c.id, {}).get("jobs", {}), jobs)
             for c in loaded.cells]
    summary = StudySummary.from_row(study, loaded.spec, [(c.stage, c.status) for c in cells])
    return StudyOut(**summary.model_dump(), baseline=loaded.spec.baseline_label(),
                    rows=[r.label for r in loaded.spec.rows()], seeds=loaded.spec.seeds,
                    metrics=loaded.spec.metrics, cells=cells, spec=study.spec, submitted=submitted)
