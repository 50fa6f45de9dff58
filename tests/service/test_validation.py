"""Strict spec validation at submit (issue 14, finding 6): JSON types are kept (no "32" or true
for an integer, no 0 for a boolean), sizes have sane upper bounds, an unknown timm model is
refused before anything runs, and the OpenAPI schema states each of these rules."""

from __future__ import annotations

from typing import Any

import pytest

from sgmim.spec import SpecError, parse_spec
from tests.service.conftest import Api

JOBS = "/api/v1/jobs"


def pretrain(**config: Any) -> dict[str, Any]:
    return {"kind": "pretrain", "name": "strict", "config": config}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"schedule": {"batch_size": "32", "steps": 3}}, "config.schedule.batch_size"),
        ({"schedule": {"batch_size": True, "steps": 3}}, "config.schedule.batch_size"),
        ({"schedule": {"batch_size": 32.5, "steps": 3}}, "config.schedule.batch_size"),
        ({"deepspeed": {"compile": 0}}, "config.deepspeed.compile"),
        ({"deepspeed": {"compile": "true"}}, "config.deepspeed.compile"),
        # equal to the literals 1 and 0 in Python, but not ZeRO stages
        ({"deepspeed": {"zero_stage": True}}, "config.deepspeed.zero_stage"),
        ({"deepspeed": {"zero_stage": False}}, "config.deepspeed.zero_stage"),
        ({"optim": {"base_lr": "0.001"}}, "config.optim.base_lr"),
        ({"optim": {"base_lr": True}}, "config.optim.base_lr"),
        ({"schedule": {"epochs": 1e12}}, "config.schedule.epochs"),
        ({"schedule": {"steps": 10**12}}, "config.schedule.steps"),
        ({"data": {"num_images": 10**12}}, "config.data.num_images"),
        ({"model": {"encoder": {"timm_name": "resnet50"}}}, "config.model.encoder.timm_name"),
        ({"model": {"encoder": {"timm_name": "swin_tiny_patch4_window7_225"}}},
         "config.model.encoder.timm_name"),
    ],
)
def test_loose_values_are_refused_naming_the_field(api: Api, config: dict[str, Any], field: str):
    r = api.client.post(JOBS, json=pretrain(**config))
    assert r.status_code == 422, r.text
    assert [".".join(map(str, e["loc"][1:])) for e in r.json()["detail"]] == [field]


def test_json_numbers_keep_their_meaning(api: Api):
    # 32.0 is an integer in JSON Schema's sense; an integer is a number
    body = pretrain(schedule={"batch_size": 32.0, "steps": 3}, optim={"base_lr": 1, "betas": [0.9, 1]},
                    deepspeed={"compile": True})
    r = api.client.post(JOBS, json=body)
    assert r.status_code == 201, r.text
    config = api.repo.get(r.json()["id"]).spec["config"]
    assert config["schedule"]["batch_size"] == 32 and config["optim"]["betas"] == [0.9, 1.0]


def test_yaml_values_are_strict_too():
    with pytest.raises(SpecError, match="config.schedule.batch_size"):
        parse_spec(pretrain(schedule={"batch_size": "32", "steps": 3}))
    spec = parse_spec(pretrain(schedule={"batch_size": 32, "epochs": 2},
                               data={"synthetic": {"num_objects": [1, 3]}}))
    assert spec.config.data.synthetic.num_objects == (1, 3)


def test_the_openapi_schema_states_the_rules(api: Api):
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    schedule = schemas["ScheduleConfig"]["properties"]
    assert schedule["batch_size"]["type"] == "integer" and schedule["batch_size"]["maximum"] == 65536
    assert {"type": "number", "maximum": 10_000}.items() <= schedule["epochs"]["anyOf"][0].items()
    encoder = schemas["EncoderConfig"]["properties"]["timm_name"]
    assert "swin_tiny_patch4_window7_224" in encoder["enum"] and "resnet50" not in encoder["enum"]
    compile_field = schemas["DeepSpeedConfig"]["properties"]["compile"]["anyOf"]  # "auto" or a strict boolean
    assert {"type": "boolean"} in compile_field and any(m.get("const") == "auto" for m in compile_field)
    name = schemas["PretrainJob"]["properties"]["name"]
    assert name["maxLength"] == 128 and "\\x00-\\x1f" in name["pattern"]
    root = schemas["PretrainDataConfig"]["properties"]["root"]["anyOf"][0]
    assert root["pattern"] == "^[^\\u0000]*$" and root["maxLength"] == api.settings.max_string_length


def test_spec_files_read_numbers_as_written(tmp_path):
    from sgmim.spec import dump_spec, load_spec

    spec = parse_spec(pretrain(schedule={"steps": 3}, optim={"eps": 1e-8, "warmup_lr": 1e-6}))
    path = tmp_path / "spec.json"
    path.write_text(dump_spec(spec))  # json.dumps writes 1e-08: a string to plain YAML 1.1
    assert load_spec(path).config.optim.eps == 1e-8
    yaml_file = tmp_path / "spec.yaml"
    yaml_file.write_text("kind: pretrain\nname: y\nconfig:\n  optim: {eps: 1e-8, base_lr: 2e-4}\n"
                         "  schedule: {steps: 3}\n")
    loaded = load_spec(yaml_file, ["config.optim.min_lr=1e-7"])
    optim = loaded.config.optim
    assert (optim.eps, optim.base_lr, optim.min_lr) == (1e-8, 2e-4, 1e-7)
