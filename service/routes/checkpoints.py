"""/api/v1/jobs/{id}/checkpoints: list and download.

`deepspeed` checkpoints (a tag folder such as checkpoints/global_step100) download as a tar
streamed on the fly; the `encoder` export (export/encoder.safetensors) and a fine-tuning job's
`model` export (export/model.safetensors) download as files with single-range support (206 /
416). Names resolve only against what the worker recorded, and the resolved real path must lie
inside the job's run directory: anything else is a 404.
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Header, Path
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response

from service import artifacts
from service.deps import RepoDep, SettingsDep
from service.routes.common import AUTH, NOT_FOUND, JobIdDep, safe_text
from service.schemas import CheckpointList, CheckpointOut, ErrorOut

router = APIRouter(prefix="/jobs", tags=["checkpoints"], responses=AUTH)


@router.get(
    "/{job_id}/checkpoints", response_model=CheckpointList, summary="List checkpoints", responses=NOT_FOUND
)
def list_checkpoints(job_id: JobIdDep, repo: RepoDep) -> CheckpointList:
    return CheckpointList(items=[CheckpointOut.from_row(c) for c in repo.checkpoints(job_id)])


def _missing(job_id: str, name: str) -> JSONResponse:
    return JSONResponse({"detail": f"job {job_id} has no checkpoint named {name[:64]!r}"}, status_code=404)


@router.get(
    "/{job_id}/checkpoints/{name}",
    summary="Download a checkpoint",
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
    job_id: JobIdDep,
    repo: RepoDep,
    settings: SettingsDep,
    name: Annotated[str, Path(description="a name from the checkpoint list")],
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
        return StreamingResponse(
            artifacts.stream_tar(entries),
            media_type="application/x-tar",
            headers={
                "Content-Length": str(artifacts.tar_size(entries)),
                "Content-Disposition": f'attachment; filename="{filename}.tar"',
            },
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
    return StreamingResponse(
        artifacts.stream_file(real, start, end) if size else iter([b""]),
        status_code=status,
        media_type="application/octet-stream",
        headers=headers,
    )
