"""/api/v1/jobs: submit, list, show, cancel, resume."""

from __future__ import annotations

import json
import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.broker import Broker, dispatch
from service.db.base import sha256_hex
from service.db.repo import JobRepo, SubmitResult
from service.deps import BrokerDep, DispatcherDep, RepoDep, SettingsDep
from service.errors import SpecValidationError
from service.openapi import SUBMIT_BODY
from service.routes.common import AUTH, CONFLICT, INVALID, NOT_FOUND, JobIdDep, check_strings, decode_body
from service.schemas import ConflictOut, ErrorOut, JobKind, JobList, JobOut, JobSummary
from service.settings import Settings
from sgmim.spec import REQUIRED_PARENT_KIND, parse_spec
from sgmim.spec.paths import PATH_NOT_ALLOWED, paths_outside
from sgmim.status import JobStatus

log = logging.getLogger("service.jobs")

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=AUTH)

# A page's cursor is the id of its last job (ids sort by creation); the schema states its form.
CURSOR_PATTERN = r"^[0-9a-z]{1,32}$"


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    openapi_extra=SUBMIT_BODY,
    summary="Submit a job",
    responses={
        200: {"model": JobOut, "description": "replay: this Idempotency-Key and body created this job"},
        409: {"model": ConflictOut, "description": "this Idempotency-Key was used with another body, "
              "or the parent job is missing, has not succeeded, is of another kind or lacks the "
              "named checkpoint (`detail` names the field)"},
        413: {"model": ErrorOut, "description": "request body too large"},
        **INVALID,
    },
)
async def submit_job(
    request: Request,
    response: Response,
    repo: RepoDep,
    broker: BrokerDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="the same key and body return the same job (200); "
            "the same key with another body is a 409",
        ),
    ] = None,
) -> JobOut:
    """Validate the spec, check its parent, store the job as `queued` and have the dispatcher
    send the wake-up message (it carries only the job id) right after. 201 with the job."""
    data = decode_body(await request.body())
    if not isinstance(data, dict):
        raise SpecValidationError([("", "a job spec must be a JSON object")], "model_type")
    key_hash = body_hash = None
    if idempotency_key is not None:
        key_hash = sha256_hex(idempotency_key)
        body_hash = sha256_hex(json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    result = await run_in_threadpool(_submit, data, key_hash, body_hash, repo, broker, settings)
    if result.created:
        dispatcher.poke()  # the wake-up message leaves the request path (service/broker.py)
    response.status_code = 201 if result.created else 200
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{result.job.id}"
    return JobOut.from_row(result.job)


def _submit(
    data: dict, key_hash: str | None, body_hash: str | None, repo: JobRepo, broker: Broker, settings: Settings
) -> SubmitResult:
    """Validate, check the parent, store: one worker thread per request."""
    check_strings(data, settings.max_string_length)
    spec = parse_spec(data)
    outside = paths_outside(spec, settings.allowed_data_roots(), resolve=False)
    if outside:
        raise SpecValidationError(outside, PATH_NOT_ALLOWED)
    if spec.parent is not None:
        repo.check_parent(
            spec.parent.job_id, spec.parent.checkpoint, spec.kind, REQUIRED_PARENT_KIND.get(spec.kind)
        )
    result = repo.submit(
        spec.model_dump(mode="json"),
        queue=broker.queue_for(spec.resources.gpu_type),
        idempotency_key_hash=key_hash,
        body_hash=body_hash,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
    return result


@router.get("", response_model=JobList, summary="List jobs, newest first", responses=INVALID)
def list_jobs(
    repo: RepoDep,
    status: Annotated[list[JobStatus] | None, Query(description="repeat to allow several")] = None,
    kind: Annotated[list[JobKind] | None, Query(description="repeat to allow several")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of the previous page")
    ] = None,
) -> JobList:
    before = cursor or None
    jobs = repo.list(status=status, kind=kind, limit=limit + 1, before_id=before)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobList(
        items=[JobSummary.from_row(j) for j in jobs],
        next_cursor=jobs[-1].id if more and jobs else None,
    )


@router.get("/{job_id}", response_model=JobOut, summary="Show a job", responses=NOT_FOUND)
def get_job(job_id: JobIdDep, repo: RepoDep) -> JobOut:
    return JobOut.from_row(repo.get(job_id))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Request cancellation",
    responses={**NOT_FOUND, **CONFLICT},
)
def cancel_job(job_id: JobIdDep, repo: RepoDep) -> JobOut:
    """A queued job is cancelled at once (it never starts); a running one becomes `cancelling`
    until its worker has stopped the run. Repeating it on a cancelling or cancelled job is
    harmless (202); a succeeded or failed job answers 409 with its status."""
    return JobOut.from_row(repo.cancel(job_id))


@router.post(
    "/{job_id}/resume",
    status_code=202,
    response_model=JobOut,
    summary="Resume a failed or cancelled job",
    responses={**NOT_FOUND, **CONFLICT},
)
def resume_job(job_id: JobIdDep, repo: RepoDep, broker: BrokerDep) -> JobOut:
    """Back to `queued`; the next attempt continues from the latest checkpoint. Any other status
    answers 409 with the current status."""
    job = repo.resume(job_id)
    dispatch(repo, broker, job)
    return JobOut.from_row(job)
