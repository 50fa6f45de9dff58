"""Helpers shared by the routers: path parameters, response docs, the job-spec body."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import Depends, Path

from service.db.errors import JobNotFound
from service.errors import SpecValidationError
from service.schemas import ConflictOut, ErrorOut, ValidationErrorOut

_JOB_ID = re.compile(r"[0-9a-z]{1,32}")
# a `names` query (/metrics, /series): comma-separated names of at most 128 characters, no NUL
NAMES_PATTERN = r"^[^,\x00]{0,128}(,[^,\x00]{0,128})*$"


async def valid_job_id(
    job_id: Annotated[str, Path(description="the job's id", examples=["01jd8x2k7m3qf5ab"])],
) -> str:
    """A malformed id is simply not found (404), never a database error."""
    if not _JOB_ID.fullmatch(job_id):
        raise JobNotFound(job_id[:64])
    return job_id


JobIdDep = Annotated[str, Depends(valid_job_id)]

NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut, "description": "no such job"}}
CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": ConflictOut, "description": "the job's status does not allow this"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorOut, "description": "invalid input"}
}
AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid bearer token"}
}


def _number(text: str) -> float | int:
    """A JSON number with a zero fraction is an integer (JSON Schema's rule: 32.0 is a valid
    `integer`); the spec's integer fields are strict, its number fields take integers."""
    value = float(text)
    return int(value) if value.is_integer() else value


def decode_body(raw: bytes) -> Any:
    """JSON without NaN/Infinity (Postgres JSON cannot store them)."""

    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw, parse_constant=reject, parse_float=_number)
    except (ValueError, RecursionError) as exc:
        msg = str(exc) if isinstance(exc, ValueError) else "JSON nested too deeply"
        raise SpecValidationError([("", f"request body is not valid JSON: {msg}")], "json_invalid") from None
