"""/api/v1/jobs: submit, list, show, cancel, resume."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import re
from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool

from service import artifacts
from service.broker import dispatch
from service.db.base import sha256_hex
from service.db.repo import SubmitResult
from service.deps import BrokerDep, RepoDep, ServicesDep, SettingsDep
from service.errors import SpecValidationError
from service.openapi import SUBMIT_BODY
from service.routes.common import (
    AUTH,
    CONFLICT,
    INVALID,
    NOT_FOUND,
    JobIdDep,
    decode_body,
)
from service.schemas import (
    ConflictOut,
    DeleteOut,
    ErrorOut,
    JobKind,
    JobList,
    JobOut,
    JobPatch,
    JobSummary,
)
from service.settings import Settings
from service.submission import body_hash, check_with_database, needs_database_checks, validate
from service.texts import safe_text
from sgmim.spec.job import TAG_PATTERN, Tag
from sgmim.status import JobStatus

log = logging.getLogger("service.jobs")

router = APIRouter(prefix="/jobs", tags=["jobs"], responses=AUTH)

JobSummaryT = TypeVar("JobSummaryT", bound=JobSummary)

_TAG = re.compile(TAG_PATTERN)

# A page's cursor is the id of its last job (ids sort by creation); the schema states its form.
CURSOR_PATTERN = r"^[0-9a-z]{1,32}$"


def _iso_datetime(value: object) -> object:
    """ISO 8601 only: pydantic would also take a number as seconds since 1970, so that
    `since=20261130` (ISO's basic form of 2026-11-30) meant August 1970."""
    if not isinstance(value, str):
        return value
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        # an unencoded + (of an offset such as +01:00) reaches the server as a space
        hint = "; send the + of an offset as %2B" if " " in value else ""
        raise PydanticCustomError(
            "datetime_parsing",
            "not an ISO 8601 date or date-time, e.g. 2026-11-30 or 2026-11-30T08:00:00Z{hint}",
            {"hint": hint},
        ) from None


IsoDateTime = Annotated[dt.datetime, BeforeValidator(_iso_datetime)]


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
    services: ServicesDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            max_length=255,
            description="the same key and body return the same job (200); "
            "the same key with another body is a 409",
        ),
    ] = None,
) -> Response:
    """Validate the spec, check its parent, store the job as `queued` and have the dispatcher
    send the wake-up message (it carries only the job id) right after. 201 with the job."""
    data = decode_body(await request.body())
    if not isinstance(data, dict):
        raise SpecValidationError([("", "a job spec must be a JSON object")], "model_type")
    settings = services.settings
    # validated here, not in a worker thread: pure CPU, and the GIL would serialise it anyway
    spec = validate(data, settings)
    queue = services.broker.queue_for(spec.resources.gpu_type)
    if needs_database_checks(spec, settings):
        await run_in_threadpool(check_with_database, spec, queue, services.repo, settings)
    dumped = spec.model_dump(mode="json")
    if idempotency_key is None:
        result = SubmitResult(await asyncio.wrap_future(services.batcher.submit(dumped, queue)), True)
    else:
        store = functools.partial(
            services.repo.submit, dumped, queue=queue, idempotency_key_hash=sha256_hex(idempotency_key),
            body_hash=body_hash(data), idempotency_ttl_s=settings.idempotency_ttl_s,
        )
        result = await run_in_threadpool(store)
    if result.created:
        services.dispatcher.poke()  # the wake-up message leaves the request path (service/broker.py)
    # serialised here, once: returning the model would have FastAPI validate it again first
    return Response(
        JobOut.from_row(result.job).model_dump_json(),
        status_code=201 if result.created else 200,
        media_type="application/json",
        headers={"Location": f"{request.scope['path'].rstrip('/')}/{result.job.id}"},
    )


@router.get("", response_model=JobList, summary="List jobs, newest first", responses=INVALID)
def list_jobs(
    repo: RepoDep,
    settings: SettingsDep,
    status: Annotated[list[JobStatus] | None, Query(description="repeat to allow several")] = None,
    kind: Annotated[list[JobKind] | None, Query(description="repeat to allow several")] = None,
    tag: Annotated[list[Tag] | None, Query(description="jobs with all these tags")] = None,
    q: Annotated[str | None, Query(max_length=128, description="part of the name, any case")] = None,
    since: Annotated[IsoDateTime | None, Query(description="created at or after (ISO 8601)")] = None,
    archived: Annotated[bool, Query(description="list the archived jobs instead")] = False,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[
        str | None, Query(pattern=CURSOR_PATTERN, description="next_cursor of the previous page")
    ] = None,
) -> JobList:
    before = cursor or None
    since = _check_filters(tag or [], q, since)
    jobs = repo.list(status=status, kind=kind, limit=limit + 1, before_id=before, tags=tag or (),
                     search=q, since=since, archived=archived)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobList(
        items=[with_disk_use(JobSummary.from_row(j), settings) for j in jobs],
        next_cursor=jobs[-1].id if more and jobs else None,
    )


def _check_filters(tags: list[str], q: str | None, since: dt.datetime | None) -> dt.datetime | None:
    """422 for a tag no job can carry or a search Postgres cannot compare (NUL); `since` in UTC."""
    errors = [(f"tag.{i}", "not a valid tag") for i, t in enumerate(tags) if not _TAG.fullmatch(t)]
    if q is not None and not safe_text(q, 128):
        errors.append(("q", "invalid text"))
    if since is not None:
        try:
            since = (since if since.tzinfo else since.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        except OverflowError:
            errors.append(("since", "date out of range"))
    if errors:
        raise SpecValidationError(errors, "value_error", where="query")
    return since


def with_disk_use(job: JobSummaryT, settings: Settings) -> JobSummaryT:
    job.disk_bytes = artifacts.disk_usage(settings.run_dir(job.id))
    return job


@router.get("/{job_id}", response_model=JobOut, summary="Show a job", responses=NOT_FOUND)
def get_job(job_id: JobIdDep, repo: RepoDep, settings: SettingsDep) -> JobOut:
    return with_disk_use(JobOut.from_row(repo.get(job_id)), settings)


@router.patch("/{job_id}", response_model=JobOut, summary="Tag, annotate or archive a job",
              responses={**NOT_FOUND, **INVALID})
def update_job(job_id: JobIdDep, patch: JobPatch, repo: RepoDep, settings: SettingsDep) -> JobOut:
    """Add or remove tags, replace the note, archive (hide from lists) or unarchive."""
    repo.update_job(job_id, add_tags=patch.add_tags, remove_tags=patch.remove_tags, note=patch.note,
                    archived=patch.archived)
    return with_disk_use(JobOut.from_row(repo.get(job_id)), settings)


@router.delete("/{job_id}", response_model=DeleteOut, summary="Delete a job and its artifacts",
               responses={**NOT_FOUND, **CONFLICT})
def delete_job(
    job_id: JobIdDep,
    repo: RepoDep,
    settings: SettingsDep,
    force: Annotated[bool, Query(description="also a job with children (they lose the link)")] = False,
) -> DeleteOut:
    """Refused (409) until the job has ended. A job with children (a pretraining job that was
    fine-tuned) keeps its row and its export, archived, unless `force`; everything else of its
    run directory is removed, checkpoints included."""
    repo.check_deletable(job_id)
    children = repo.child_ids(job_id)
    run_dir = settings.run_dir(job_id)
    if children and not force:
        exports = [c for c in repo.checkpoints(job_id) if c.kind != "deepspeed"]
        kept = tuple(c.path for c in exports)
        freed = artifacts.remove_tree_except(run_dir, kept)
        for c in repo.checkpoints(job_id):
            if c.kind == "deepspeed":
                repo.delete_checkpoint(job_id, c.name)
        repo.update_job(job_id, archived=True)
        return DeleteOut(deleted=False, kept=list(kept), freed_bytes=freed, children=children)
    repo.forget_job(job_id)
    freed = artifacts.remove_tree_except(run_dir)
    return DeleteOut(deleted=True, kept=[], freed_bytes=freed, children=children)


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
