"""Exception handlers: every error is JSON `{"detail": ...}` (but a browser's dashboard page with
an address it cannot use gets a page that says so); no stack trace ever leaves."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.db.errors import (
    IdempotencyConflict,
    InvalidTransition,
    JobNotFound,
    ParentError,
    StudyNotFound,
)
from service.middleware import wants_page
from sgmim.spec import SpecError

log = logging.getLogger("service")

HTTP_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})

_UNION_TAGS = ("pretrain", "finetune", "evaluate")


class SpecValidationError(Exception):
    """422 for a job spec: `errors` are (dotted field path, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]], type_: str = "value_error", where: str = "body"):
        self.errors, self.type, self.where = errors, type_, where


class StudyInvalid(Exception):
    """422 for a posted study: `detail` is a list of {loc, msg, type}, loc naming the study's
    field or the cell, stage and field of one of its jobs."""

    def __init__(self, detail: list[dict[str, Any]]):
        self.detail = detail


class UnknownCells(Exception):
    """422: a retry names cells the study does not have."""

    def __init__(self, study: str, unknown: list[str], known: list[str]):
        # quoted and cut short: the names come from the query as sent (empty, control characters)
        named = ", ".join(repr(cell[:64]) for cell in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        super().__init__(f"study {study} has no cell {named}; its cells: {', '.join(known)}")


class StudyInFlight(Exception):
    """409: the study still has a job queued or running (deleting it would orphan a chain the
    service no longer advances)."""

    def __init__(self, study: str, job_id: str, status: str):
        self.job_id, self.status = job_id, status
        super().__init__(f"study {study} has jobs in flight (job {job_id} is {status}); cancel it first: "
                         f"POST /api/v1/studies/{study}/cancel")


def field_errors(
    errors: list[tuple[str, str]], type_: str = "value_error", where: str = "body"
) -> list[dict[str, Any]]:
    out = []
    for path, msg in errors:
        loc: list[str | int] = [where]
        for part in path.split(".") if path else []:
            loc.append(int(part) if part.isdigit() else part)
        out.append({"loc": loc, "msg": msg, "type": type_})
    return out


def _strip_tag(loc: tuple[Any, ...] | list[Any]) -> list[Any]:
    loc = list(loc)
    if len(loc) > 1 and loc[0] == "body" and loc[1] in _UNION_TAGS:
        del loc[1]
    return [p if isinstance(p, int) else str(p) for p in loc]


def _validation_item(error: dict[str, Any]) -> dict[str, Any]:
    if error.get("type") == "json_invalid":
        # FastAPI puts the character position into `loc`, where a field path is expected
        position = error.get("loc", ())[-1:]
        at = f" (char {position[0]})" if position and isinstance(position[0], int) else ""
        reason = error.get("ctx", {}).get("error", "JSON decode error")
        return {"loc": ["body"], "msg": f"request body is not valid JSON: {reason}{at}",
                "type": "json_invalid"}
    return {
        "loc": _strip_tag(error.get("loc", ())),
        "msg": str(error.get("msg", "invalid")),
        "type": str(error.get("type", "value_error")),
    }


async def _validation(request: Request, exc: RequestValidationError) -> Response:
    detail = [_validation_item(e) for e in exc.errors()]
    if wants_page(request.scope, dict(request.headers)):
        # a browser on a dashboard page with an odd address: a page that says what is wrong
        from service.web.templating import page  # here: service.web's pages import this module

        problems = [f"{e['loc'][-1]}: {e['msg']}" for e in detail]
        return page(request, "bad_request.html", {"problems": problems}, status_code=422)
    return JSONResponse({"detail": detail}, status_code=422)


async def _spec(_: Request, exc: SpecValidationError) -> JSONResponse:
    return JSONResponse({"detail": field_errors(exc.errors, exc.type, exc.where)}, status_code=422)


def spec_error_detail(exc: SpecError) -> list[dict[str, Any]]:
    """A spec's errors as `detail` items, each with its own type (spec_rule, less_than_equal, ...)."""
    return [
        error
        for pair, type_ in zip(exc.errors, exc.types, strict=True)
        for error in field_errors([pair], type_)
    ]


async def _spec_error(_: Request, exc: SpecError) -> JSONResponse:
    return JSONResponse({"detail": spec_error_detail(exc)}, status_code=422)


async def _parent(_: Request, exc: ParentError) -> JSONResponse:
    # 409: the spec is valid; it conflicts with the state of the job it names (missing, not
    # succeeded, another kind, no such checkpoint), which no schema can state
    return JSONResponse({"detail": field_errors([(exc.path, exc.message)], "parent_error")}, status_code=409)


async def _not_found(_: Request, exc: JobNotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _study_not_found(_: Request, exc: StudyNotFound) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _study_invalid(_: Request, exc: StudyInvalid) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=422)


async def _unknown_cells(_: Request, exc: UnknownCells) -> JSONResponse:
    detail = field_errors([("cell", str(exc))], "value_error", "query")
    return JSONResponse({"detail": detail}, status_code=422)


async def _study_in_flight(_: Request, exc: StudyInFlight) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "status": exc.status, "job_id": exc.job_id}, status_code=409)


async def _transition(_: Request, exc: InvalidTransition) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "status": exc.current, "job_id": exc.job_id}, status_code=409)


async def _idempotency(_: Request, exc: IdempotencyConflict) -> JSONResponse:
    return JSONResponse({"detail": str(exc), "job_id": exc.job_id}, status_code=409)


# What FastAPI raises (a 400) for a body it cannot decode, e.g. one that is not UTF-8; our schema
# states 422 for every malformed body, as for one that is not JSON
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
        detail = [{"type": "json_invalid", "loc": ["body"],
                   "msg": "request body is not valid JSON: it must be UTF-8 encoded"}]
        return JSONResponse({"detail": detail}, status_code=422)
    headers = exc.headers
    if exc.status_code == 405:
        # the router names the methods of the first route matching the path only
        allowed = allowed_methods(request.app, request.url.path)
        if allowed:
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document gives the path's templates (GET brings HEAD); [] for a
    path it does not describe (the dashboard's)."""
    table = getattr(app.state, "allowed_methods", None)
    if table is None:
        table = app.state.allowed_methods = _method_table(app.openapi()["paths"])
    found = {method for pattern, methods in table if pattern.fullmatch(path) for method in methods}
    return sorted(found)


def _method_table(paths: dict[str, dict[str, Any]]) -> list[tuple[re.Pattern[str], set[str]]]:
    table = []
    for template, operations in paths.items():
        pattern = re.compile(re.sub(r"\\{[^}/]+\\}", "[^/]+", re.escape(template)))
        methods = {m.upper() for m in operations if m.upper() in HTTP_METHODS}
        if "GET" in methods:
            methods.add("HEAD")
        table.append((pattern, methods))
    return table


async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
    log.error(
        "database error on %s %s: %s", request.method, request.url.path, exc.__class__.__name__, exc_info=exc
    )
    return JSONResponse(
        {"detail": "database unavailable, retry later"}, status_code=503, headers={"Retry-After": "1"}
    )


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(SpecValidationError, _spec)
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(ParentError, _parent)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(StudyNotFound, _study_not_found)
    app.add_exception_handler(StudyInvalid, _study_invalid)
    app.add_exception_handler(UnknownCells, _unknown_cells)
    app.add_exception_handler(StudyInFlight, _study_in_flight)
    app.add_exception_handler(InvalidTransition, _transition)
    app.add_exception_handler(IdempotencyConflict, _idempotency)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(OperationalError, _database)
    app.add_exception_handler(Exception, _unhandled)
