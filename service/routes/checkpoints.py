"""/api/v1/jobs/{id}/checkpoints: list and download.

`deepspeed` checkpoints (a tag folder such as checkpoints/global_step100) download as a tar
streamed on the fly; the `encoder` export (export/encoder.safetensors) and a fine-tuning job's
`model` export (export/model.safetensors) download as files with single-range support (206 /
416). Names resolve only against what the worker recorded, and the resolved real path must lie
inside the job's run directory: anything else is a 404.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from service import artifacts
from service.db.repo import JobRepo
from service.deps import RepoDep, SettingsDep
from service.routes.common import AUTH, CONFLICT, NOT_FOUND, JobIdDep
from service.schemas import CheckpointList, CheckpointOut, ErrorOut, PruneOut
from service.settings import Settings
from service.texts import safe_text

router = APIRouter(prefix="/jobs", tags=["checkpoints"], responses=AUTH)


@router.get(
    "/{job_id}/checkpoints", response_model=CheckpointList, summary="List checkpoints", responses=NOT_FOUND
)
def list_checkpoints(job_id: JobIdDep, repo: RepoDep) -> CheckpointList:
    return CheckpointList(items=[CheckpointOut.from_row(c) for c in repo.checkpoints(job_id)])


def _missing(job_id: str, name: str) -> JSONResponse:
    return JSONResponse({"detail": f"job {job_id} has no checkpoint named {name[:64]!r}"}, status_code=404)


@router.head("/{job_id}/checkpoints/{name}", include_in_schema=False)  # size and name, no body
@router.get(
    "/{job_id}/checkpoints/{name}",
    summary="Download a checkpoint (HEAD: the same headers, without the body)",
    response_class=Response,
    responses={
        200: {
            "description": "deepspeed: a tar of the tag folder; encoder, model: the safetensors file",
            "content": {
                "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        206: {
            "description": "the requested byte range (encoder and model only)",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        416: {"model": ErrorOut, "description": "the range lies outside the file"},
        **NOT_FOUND,
    },
)
def download_checkpoint(
    request: Request,
    job_id: JobIdDep,
    repo: RepoDep,
    settings: SettingsDep,
    name: Annotated[str, PathParam(description="a name from the checkpoint list")],
    range_: Annotated[str | None, Header(alias="range", max_length=200, include_in_schema=False)] = None,
) -> Response:
    if not safe_text(name, 256):
        return _missing(job_id, "")
    row = repo.checkpoint(job_id, name)
    if row is None:
        return _missing(job_id, name)
    run_dir = settings.run_dir(job_id)
    real = artifacts.resolve_in_run_dir(run_dir, row.path)
    if real is None:
        return _missing(job_id, name)
    root = os.path.realpath(run_dir)
    filename = f"{job_id}-{name}"
    if row.kind == "deepspeed":
        if not os.path.isdir(real):
            return _missing(job_id, name)
        entries = artifacts.tar_plan(root, real, name)
        tar_headers = {
            "Content-Length": str(artifacts.tar_size(entries)),
            "Content-Disposition": f'attachment; filename="{filename}.tar"',
        }
        if request.method == "HEAD":
            return Response(media_type="application/x-tar", headers=tar_headers)
        return StreamingResponse(
            artifacts.stream_tar(entries), media_type="application/x-tar", headers=tar_headers
        )
    if not os.path.isfile(real):
        return _missing(job_id, name)
    st = os.stat(real)
    size = st.st_size
    headers = {
        "Accept-Ranges": "bytes",
        **artifacts.file_validators(st),
        "Content-Disposition": f'attachment; filename="{filename}.safetensors"',
    }
    try:
        span = artifacts.parse_range(range_, size)
    except artifacts.Unsatisfiable:
        return JSONResponse(
            {"detail": f"range not satisfiable (size {size})"},
            status_code=416,
            headers={"Content-Range": f"bytes */{size}"},
        )
    start, end, status = (0, size - 1, 200) if span is None else (span[0], span[1], 206)
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(max(0, end - start + 1))
    if request.method == "HEAD":
        return Response(status_code=status, media_type="application/octet-stream", headers=headers)
    return StreamingResponse(
        artifacts.stream_file(real, start, end) if size else iter([b""]),
        status_code=status,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.post(
    "/{job_id}/checkpoints/prune",
    response_model=PruneOut,
    summary="Delete all but the newest DeepSpeed checkpoints of a job",
    responses={**NOT_FOUND, **CONFLICT},
)
def prune_checkpoints(
    job_id: JobIdDep,
    repo: RepoDep,
    settings: SettingsDep,
    keep: Annotated[
        int | None, Query(ge=0, le=1000, description="default: the keep_checkpoints setting, else 1")
    ] = None,
) -> PruneOut:
    """Keep the newest `keep` DeepSpeed tags and every export; the rest leave the disk. Refused
    (409) while the job runs (its trainer rotates its own tags)."""
    repo.check_deletable(job_id, action="prune the checkpoints of")
    keep = keep if keep is not None else settings.keep_checkpoints
    return prune(repo, settings, job_id, 1 if keep is None else keep)


def prune(repo: JobRepo, settings: Settings, job_id: str, keep: int) -> PruneOut:
    """The retention policy for one ended job (also run by service/notify.py's pass)."""
    tags = [c for c in repo.checkpoints(job_id) if c.kind == "deepspeed"]  # oldest first
    doomed = tags[: max(0, len(tags) - keep)]
    run_dir = settings.run_dir(job_id)
    freed = 0
    for c in doomed:
        real = artifacts.resolve_in_run_dir(run_dir, c.path)
        if real is not None:
            freed += artifacts.disk_usage(Path(real))
            shutil.rmtree(real, ignore_errors=True)
        repo.delete_checkpoint(job_id, c.name)
    kept = [c.name for c in repo.checkpoints(job_id)]
    return PruneOut(removed=[c.name for c in doomed], kept=kept, freed_bytes=freed)
