"""/submit: a YAML job spec in a text area; errors come back with their field path and line."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from service.db.errors import ParentError
from service.deps import BrokerDep, RepoDep, SettingsDep
from service.errors import SpecValidationError, field_errors, spec_error_detail
from service.openapi import SPEC_EXAMPLES
from service.routes.common import decode_body
from service.submission import submit_spec
from service.web.templating import page
from sgmim.spec import SpecError
from sgmim.spec.job import SpecLoader

router = APIRouter(include_in_schema=False)

EXAMPLE_YAML = yaml.safe_dump(SPEC_EXAMPLES["pretrain"]["value"], sort_keys=False, default_flow_style=None)

# A job spec holds a few hundred values. Anchors and aliases can make a few hundred bytes of YAML
# expand to billions ("billion laughs"), which every later check would walk value by value.
MAX_YAML_VALUES = 100_000


@router.get("/submit")
def submit_page(request: Request) -> Response:
    return page(request, "submit.html", {"example": EXAMPLE_YAML})


@router.post("/submit")
async def submit_yaml(request: Request, repo: RepoDep, broker: BrokerDep, settings: SettingsDep) -> Response:
    """Body `{"spec_yaml": "..."}`. 201 `{"id"}`, or 422 `{"detail": [{loc, msg, type, line}]}`
    where `line` is the spec's line that the field path points at (1-based; null if unknown)."""
    body = decode_body(await request.body())
    text = body.get("spec_yaml") if isinstance(body, dict) else None
    if not isinstance(text, str):
        return _invalid(
            [{"loc": ["body", "spec_yaml"], "msg": "spec_yaml (text) is required", "type": "missing"}]
        )
    try:
        # the CLI's loader: `1e-8` is a number, as `sgmim submit` reads the same file
        data = yaml.load(text, Loader=SpecLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return _invalid(
            [{"loc": ["body"], "msg": f"not valid YAML: {problem}", "type": "yaml", "line": line}]
        )
    if _more_values_than(data, MAX_YAML_VALUES):
        return _invalid([{"loc": ["body"], "msg": f"the spec holds more than {MAX_YAML_VALUES} values "
                          "(an alias, *name, counts each time it is used)", "type": "yaml", "line": None}])
    if not isinstance(data, dict):
        return _invalid(
            [
                {
                    "loc": ["body"],
                    "msg": "a job spec is a mapping (kind, name, config, ...)",
                    "type": "model_type",
                    "line": 1,
                }
            ]
        )
    try:
        result = await run_in_threadpool(submit_spec, data, None, repo, broker, settings)
    except SpecValidationError as exc:
        errors = field_errors(exc.errors, exc.type, exc.where)
    except SpecError as exc:
        errors = spec_error_detail(exc)
    except ParentError as exc:
        errors = field_errors([(exc.path, exc.message)], "parent_error")
    else:
        return JSONResponse({"id": result.job.id}, status_code=201)
    lines = _line_index(text)
    for error in errors:
        error["line"] = _line_of(lines, error["loc"][1:])
    return _invalid(errors)


def _more_values_than(data: Any, limit: int) -> bool:
    """Whether the decoded YAML holds more than `limit` values, an alias counted each time it is
    used (a self-referencing one never ends: more than any limit)."""
    count, stack = 0, [data]
    while stack:
        count += 1
        if count > limit:
            return True
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def _invalid(errors: list[dict[str, Any]]) -> JSONResponse:
    return JSONResponse({"detail": errors}, status_code=422)


def _line_index(text: str) -> Any:
    try:
        return yaml.compose(text)
    except yaml.YAMLError:
        return None


def _line_of(node: Any, path: list[Any]) -> int | None:
    """1-based line of the deepest node of `path` that the YAML has (a missing key points at
    its parent mapping)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if child is not None:
                key = next(k for k, v in node.value if v is child)
                line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
