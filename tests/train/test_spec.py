"""The job spec: examples validate, unknown keys and bad values fail naming the field path."""

import copy
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sgmim.cli import app
from sgmim.spec import SpecError, apply_overrides, load_spec, parse_spec, read_spec_data
from sgmim.spec.model import SIMMIM_VIT_LAYOUT

EXAMPLES = sorted(Path(__file__).parents[2].joinpath("examples", "jobs").glob("*.yaml"))


def parse_example(path: Path):
    """An example spec as submitted (a fine-tuning or evaluation job with its parent given)."""
    if path.name.startswith(("finetune", "evaluate")):
        return parse_spec(apply_overrides(read_spec_data(path), ["parent.job_id=parent-job"]))
    return load_spec(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_spec_validates(path):
    assert parse_example(path).name


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_trains_zero_0_on_one_process_and_zero_2_on_several(path):
    """ZeRO has nothing to shard in one process and its partitioning only costs time there."""
    deepspeed = getattr(parse_example(path).config, "deepspeed", None)
    if deepspeed is None:
        pytest.skip("an evaluate job does not train")
    assert (deepspeed.resolved_zero_stage(1), deepspeed.resolved_zero_stage(8)) == (0, 2)


def example(name: str):
    return load_spec(Path(__file__).parents[2] / "examples" / "jobs" / name)


def test_paper_pretraining_specs_follow_the_authors_recipes():
    # SimMIM's SwinV2-B and ViT-B configs (and the SG-MIM authors' ViT-B one): warm-up from
    # 5e-7; SwinV2-B: drop path 0.1 and the normalised target with patch 47. The SG-MIM
    # authors' Swin-B 100-epoch config: warm-up from 1e-6, drop path 0, plain target.
    swinv2 = example("pretrain-swinv2-base-800ep.yaml").config
    assert swinv2.optim.warmup_lr == 5e-7 and swinv2.model.encoder.drop_path_rate == 0.1
    assert swinv2.model.loss.norm_target.enabled and swinv2.model.loss.norm_target.patch_size == 47
    vit = example("pretrain-vit-base-800ep.yaml").config
    assert vit.optim.warmup_lr == 5e-7 and vit.model.encoder.drop_path_rate == 0.1
    assert not vit.model.loss.norm_target.enabled
    assert vit.model.encoder.timm_kwargs() | SIMMIM_VIT_LAYOUT == vit.model.encoder.timm_kwargs()
    swin = example("pretrain-swin-base-100ep.yaml").config
    assert swin.optim.warmup_lr == 1e-6 and swin.model.encoder.drop_path_rate == 0.0
    assert not swin.model.loss.norm_target.enabled and swin.optim.schedule == "cosine"


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
    ({"config": {"data": {"synthetic": {"render_size": [4, 64]}}}}, "config.data.synthetic.render_size"),
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


def test_an_override_into_a_missing_section_keeps_that_sections_defaults():
    """A section the spec leaves out is the job model's own default (a pretrain schedule of 100
    epochs, a fine-tuning optimiser with its poly schedule and 1 warm-up epoch), and an override
    inside it changes that one value, not the whole section back to the field defaults."""
    pre = apply_overrides({"kind": "pretrain", "name": "p"}, ["config.schedule.seed=3"])
    schedule = parse_spec(pre).config.schedule
    assert (schedule.seed, schedule.epochs, schedule.steps) == (3, 100, None)
    fine = read_spec_data(EXAMPLES[0].with_name("finetune-depth-tiny.yaml"))
    del fine["config"]["optim"]
    fine["parent"] = {"job_id": "parent-job"}
    default = parse_spec(copy.deepcopy(fine)).config.optim
    optim = parse_spec(apply_overrides(fine, ["config.optim.base_lr=3e-4"])).config.optim
    assert optim == default.model_copy(update={"base_lr": 3e-4})
    assert (optim.schedule, optim.warmup_epochs) == ("poly", 1), "not OptimConfig's own defaults"


def test_an_override_of_one_schedule_length_replaces_the_other():
    data = {"kind": "pretrain", "name": "p", "config": {"schedule": {"epochs": 4, "batch_size": 8}}}
    apply_overrides(data, ["config.schedule.steps=50"])
    schedule = parse_spec(data).config.schedule
    assert (schedule.steps, schedule.epochs, schedule.batch_size) == (50, None, 8)
    apply_overrides(data, ["config.schedule.epochs=2"])
    assert (parse_spec(data).config.schedule.epochs, parse_spec(data).config.schedule.steps) == (2, None)


def test_an_override_that_is_not_yaml_is_one_error_line_in_train_and_submit():
    with pytest.raises(SpecError) as info:
        apply_overrides({}, ["config.schedule.steps=[1,"])
    assert str(info.value) == ("--set 'config.schedule.steps=[1,': not valid YAML: expected the node "
                               "content, but found '<stream end>' (line 1, column 4)")
    for command in ("train", "submit"):  # submit fails before it connects
        result = CliRunner().invoke(app, [command, str(EXAMPLES[0]), "--set", "config.schedule.steps=[1,"])
        assert result.exit_code == 2, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith("error: ") and "not valid YAML" in line


def test_unreadable_and_non_mapping_files(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SpecError, match="mapping"):
        load_spec(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("kind: pretrain\nname: [x\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "broken.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'broken.yaml'} is not valid YAML: ")
    assert "\n" not in str(info.value) and "(line 3, column 1)" in str(info.value)
