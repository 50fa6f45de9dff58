"""OpenAPI: the job-spec schema (sgmim.spec.JobSpec) as the submit request body, with examples."""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from sgmim.spec import spec_json_schema
from sgmim.spec.study import STAGES, StudySpec

SPEC_EXAMPLES: dict[str, dict[str, Any]] = {
    "pretrain": {
        "summary": "SG-MIM pretraining of a tiny Swin on synthetic RGB-D scenes (CPU, about a minute)",
        "value": {
            "kind": "pretrain",
            "name": "pretrain-tiny",
            "config": {
                "model": {
                    "encoder": {
                        "timm_name": "swin_tiny_patch4_window7_224",
                        "img_size": 64,
                        "window_size": 4,
                        "embed_dim": 32,
                        "depths": [1, 1, 2, 1],
                        "num_heads": [1, 2, 4, 8],
                    },
                    "mask": {"mask_patch_size": 16, "ratio": 0.6},
                },
                "data": {"source": "synthetic", "num_images": 256, "num_workers": 0},
                "schedule": {"batch_size": 32, "epochs": 4, "log_every": 2},
            },
            "resources": {"gpus": 1},
            "priority": 5,
            "max_restarts": 2,
        },
    },
    "finetune": {
        "summary": "Depth fine-tuning initialised from a succeeded pretraining job's exported encoder",
        "value": {
            "kind": "finetune",
            "name": "finetune-depth",
            "parent": {"job_id": "01jd8x2k7m3qf5ab"},
            "config": {"task": "depth", "init": "parent", "schedule": {"epochs": 25}},
            "resources": {"gpus": 8, "gpu_type": "a100"},
        },
    },
    "evaluate": {
        "summary": "Evaluate a fine-tuned model on its validation split",
        "value": {
            "kind": "evaluate",
            "name": "eval-depth",
            "parent": {"job_id": "01jd8y4n2p5rt7cd"},
            "config": {"split": "val", "eval": {"flip": True}},
        },
    },
}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                v.replace("#/$defs/", "#/components/schemas/")
                if k == "$ref" and isinstance(v, str)
                else _rewrite_refs(v)
            )
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


# What `check_strings` enforces on every string of a submitted spec, stated in the schema.
NO_NUL = "^[^\\u0000]*$"


def _bound_strings(node: Any, max_length: int) -> None:
    if isinstance(node, dict):
        if node.get("type") == "string" and "enum" not in node and "const" not in node:
            node.setdefault("pattern", NO_NUL)
            node["maxLength"] = min(node.get("maxLength", max_length), max_length)
        for value in node.values():
            _bound_strings(value, max_length)
    elif isinstance(node, list):
        for value in node:
            _bound_strings(value, max_length)


def job_spec_components(max_string_length: int = 4096) -> dict[str, Any]:
    """JobSpec and its parts as OpenAPI components, with the API's string limits."""
    schema = copy.deepcopy(spec_json_schema())
    _bound_strings(schema, max_string_length)
    defs = schema.pop("$defs", {})
    components = {name: _rewrite_refs(body) for name, body in defs.items()}
    top = _rewrite_refs(schema)
    if "discriminator" in top:
        top["discriminator"]["mapping"] = {
            k: v.replace("#/$defs/", "#/components/schemas/")
            for k, v in top["discriminator"].get("mapping", {}).items()
        }
    top["title"] = "JobSpec"
    top["description"] = (
        "A job spec: `kind` (pretrain, finetune, evaluate) picks the schema of `config`. "
        "Unknown keys are rejected; a 422 names the field path."
    )
    components["JobSpec"] = top
    return components


def json_body(schema: str, examples: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` of a route that reads its JSON body itself: the schema it validates
    against (a component) and its examples."""
    content = {"schema": {"$ref": f"#/components/schemas/{schema}"}, "examples": examples}
    return {"requestBody": {"required": True, "content": {"application/json": content}}}


SUBMIT_BODY = json_body("JobSpec", SPEC_EXAMPLES)


STUDY_EXAMPLE: dict[str, Any] = {
    "name": "sgmim-vs-simmim",
    "description": "does structured guidance beat SimMIM here?",
    "pretrain": SPEC_EXAMPLES["pretrain"]["value"],
    "finetune": {k: v for k, v in SPEC_EXAMPLES["finetune"]["value"].items() if k != "parent"},
    "evaluate": {k: v for k, v in SPEC_EXAMPLES["evaluate"]["value"].items() if k != "parent"},
    "axes": {"method": ["simmim", "sgmim"]},
    "seeds": [0, 1, 2],
    "metrics": ["rmse", "abs_rel", "delta1"],
}


def study_spec_components(max_string_length: int = 4096) -> dict[str, Any]:
    """StudySpec as posted, and its StudyVariant: the base jobs are job specs of their kind,
    inline (the service reads no files)."""
    schema = copy.deepcopy(StudySpec.model_json_schema())
    variant = schema.pop("$defs")["Variant"]
    jobs = job_spec_components(max_string_length)
    base_jobs = {}
    for stage in STAGES:
        base_jobs[f"Study{stage.capitalize()}Job"] = _base_job(jobs[f"{stage.capitalize()}Job"], stage)
        schema["properties"][stage] = {"$ref": f"#/components/schemas/Study{stage.capitalize()}Job",
                                       "description": f"the base {stage} job, inline"}
    schema["properties"]["variants"]["items"] = {"$ref": "#/components/schemas/StudyVariant"}
    schema["title"] = "StudySpec"
    schema["description"] = (
        "A study: three base jobs (inline; a child's parent is filled in per cell), the rows "
        "(variants crossed with axes) and the seeds. Keys of `set` and `axes`: method, mask.*, "
        "guidance.*, loss.*, encoder.* or a dotted key of one job (pretrain.config.optim.base_lr). "
        "A 422 names the study's field, or the cell, stage and field of the job it breaks."
    )
    # the values (and keys) a study sets are any JSON, with every string bounded like the rest
    value = {"$ref": "#/components/schemas/StudyValue"}
    keys = {"type": "string", "pattern": NO_NUL, "maxLength": max_string_length}
    schema["properties"]["axes"].update(propertyNames=keys)
    schema["properties"]["axes"]["additionalProperties"]["items"] = value
    variant["properties"]["set"].update(propertyNames=keys, additionalProperties=value)
    any_value = {"description": "any JSON value; strings (and keys) without NUL, at most the API's "
                                "string length", "anyOf": [
        {"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
        {"type": "array", "items": value},
        {"type": "object", "propertyNames": keys, "additionalProperties": value}]}
    components = {"StudySpec": schema, "StudyVariant": variant, "StudyValue": any_value, **base_jobs}
    _bound_strings(components, max_string_length)
    return components


def _base_job(job: dict[str, Any], stage: str) -> dict[str, Any]:
    """A job spec as a study's base job: each cell names its own job and gives it its parent
    (sgmim/study/grid.py), so `name` and `parent` are optional and not read (any value)."""
    base = copy.deepcopy(job)
    base["required"] = [field for field in base.get("required", []) if field != "name"]
    ignored = {"name": f"ignored: each cell's job is named <study>-<cell>-{stage}",
               "parent": "ignored: a cell's fine-tuning and evaluation jobs take the cell's previous "
                         "stage as their parent"}
    for field, description in ignored.items():
        base["properties"][field] = {"$ref": "#/components/schemas/StudyValue", "description": description}
    base["title"] = f"Study{stage.capitalize()}Job"
    return base


STUDY_BODY = json_body(
    "StudySpec", {"methods": {"summary": "SG-MIM vs SimMIM over three seeds", "value": STUDY_EXAMPLE}}
)


def install_openapi(app: FastAPI, max_string_length: int = 4096) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        components = {**job_spec_components(max_string_length),
                      **study_spec_components(max_string_length)}
        for name, body in components.items():
            if name in schemas and schemas[name] != body:
                raise RuntimeError(f"OpenAPI component {name} defined twice")
            schemas[name] = body
        schema["components"].setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "required on every route but /healthz when tokens are configured",
        }
        schema["security"] = [{"bearer": []}, {}]
        app.openapi_schema = json.loads(json.dumps(schema))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
