"""Helpers shared by the routers: path parameters, response docs, the job-spec body."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from fastapi import Depends, Path

from service.db.errors import JobNotFound
from service.errors import SpecValidationError
from service.schemas import ConflictOut, ErrorOut, ValidationErrorOut

_JOB_ID = re.compile(r"[0-9a-z]{1,32}")


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


def check_strings(data: Any, max_length: int, max_depth: int = 64) -> None:
    """Every string (and key) of the body is at most max_length characters, encodable as
    UTF-8 and free of NUL (which Postgres text cannot hold); numbers are finite (1e999 parses
    as infinity); nesting at most max_depth."""
    errors: list[tuple[str, str]] = []
    stack: list[tuple[Any, list[str]]] = [(data, [])]
    while stack and len(errors) < 20:
        value, path = stack.pop()
        if len(path) > max_depth:
            errors.append((".".join(path), f"nested deeper than {max_depth} levels"))
            continue
        if isinstance(value, dict):
            for k, v in value.items():
                if (msg := _bad_string(k, max_length)) is not None:
                    errors.append((".".join(path), f"key {k[:32]!r}…: {msg}"))
                    continue
                stack.append((v, [*path, k]))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                stack.append((v, [*path, str(i)]))
        elif isinstance(value, str) and (msg := _bad_string(value, max_length)) is not None:
            errors.append((".".join(path), msg))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append((".".join(path), "number out of range"))
    if errors:
        raise SpecValidationError(errors, "string_invalid")


def _bad_string(value: str, max_length: int) -> str | None:
    if len(value) > max_length:
        return f"string longer than {max_length} characters"
    if "\x00" in value:
        return "string contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "string is not valid Unicode (lone surrogate)"
    return None


def safe_text(value: str, max_length: int = 256) -> bool:
    return len(value) <= max_length and _bad_string(value, max_length) is None
