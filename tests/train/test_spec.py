"""The job spec: examples validate, unknown keys and bad values fail naming the field path."""

from pathlib import Path

import pytest

from sgmim.spec import SpecError, apply_overrides, load_spec, parse_spec, read_spec_data

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples", "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_spec_validates(path):
    if path.name.startswith(("finetune", "evaluate")):
        data = apply_overrides(read_spec_data(path), ["parent.job_id=parent-job"])
        spec = parse_spec(data)
    else:
        spec = load_spec(path)
    assert spec.name


def errors_of(data) -> dict[str, str]:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return dict(info.value.errors)


@pytest.mark.parametrize(("patch", "path"), [
    ({"config": {"optim": {"base_lr": -1}}}, "config.optim.base_lr"),
    ({"config": {"optim": {"learning_rate": 1e-3}}}, "config.optim.learning_rate"),
    ({"config": {"model": {"mask": {"ratio": 1.5}}}}, "config.model.mask.ratio"),
    ({"config": {"model": {"encoder": {"timm_name": "resnet50"}}}}, "config.model.encoder.timm_name"),
    ({"config": {"deepspeed": {"zero_stage": 4}}}, "config.deepspeed.zero_stage"),
    ({"config": {"schedule": {"batch_size": 8}}}, "config.schedule"),
    ({"resources": {"gpus": 0}}, "resources.gpus"),
    ({"priority": 12}, "priority"),
    ({"colour": "blue"}, "colour"),
    ({"kind": "train"}, "kind"),
    ({"parent": {"job_id": "abc"}}, "parent"),
])
def test_bad_specs_name_the_field(patch, path):
    data = {"kind": "pretrain", "name": "x", "config": {"schedule": {"steps": 5}}}
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    errors = errors_of(data)
    assert path in errors, errors


def test_finetune_without_parent_or_file_names_parent():
    assert "parent" in errors_of({"kind": "finetune", "name": "f"})
    assert "config.init_path" in errors_of({"kind": "finetune", "name": "f", "config": {"init": "file"}})


def test_overrides_apply_yaml_values():
    data = {"kind": "pretrain", "name": "x"}
    apply_overrides(data, ["config.schedule.steps=7", "config.model.guidance.enabled=false"])
    spec = parse_spec(data)
    assert spec.config.schedule.steps == 7 and spec.config.model.guidance.enabled is False
    with pytest.raises(SpecError, match="key.path=value"):
        apply_overrides({}, ["nonsense"])


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")
