"""`sgmim data synth` and `sgmim data pseudo-depth` end to end (a tiny random DPT, no download)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from sgmim.cli import app
from sgmim.data import build_downstream_dataset, build_pretrain_dataset
from sgmim.data.downstream import SyntheticLabelledSource
from sgmim.data.pretrain import SyntheticSource
from sgmim.data.synthetic.export import GT_DEPTH_SCALE
from sgmim.data.synthetic.splits import SEEDS_PER_SPLIT
from sgmim.models import MaskGenerator
from sgmim.spec import DownstreamDataConfig, PretrainDataConfig, SpecError, SyntheticConfig, parse_spec

from .conftest import save_rgb

runner = CliRunner()


def test_synth_writes_an_image_folder_both_loaders_read(tmp_path):
    out = tmp_path / "synth" / "val"
    result = runner.invoke(app, ["data", "synth", "--out", str(out), "--count", "3", "--size", "24x32",
                                 "--split", "val"])
    assert result.exit_code == 0, result.output
    for folder in ("images", "depth", "gt_depth", "labels"):
        assert len(list((out / folder).glob("*.png"))) == 3
    with Image.open(next((out / "depth").glob("*.png"))) as depth:
        assert depth.mode == "I;16" and depth.size == (32, 24)
    assert json.loads((out / "meta.json").read_text())["split"] == "val"

    pretrain = build_pretrain_dataset(PretrainDataConfig(source="image_folder", root=str(out)), 16,
                                      MaskGenerator(16, 8, 4, 0.5))
    assert len(pretrain) == 3 and pretrain[0]["depth"].shape == (1, 16, 16)
    cfg = DownstreamDataConfig(dataset="folder", root=str(tmp_path / "synth"))
    depth = build_downstream_dataset(cfg, "val", "depth", train=False)
    assert float(depth[0]["depth"].min()) > 0.3 and float(depth[0]["depth"].max()) < 15.0


def test_synth_errors_are_one_line_without_traceback(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path), "--count", "2", "--split", "dev"])
    assert result.exit_code == 1
    assert "error: synthetic split 'dev'" in result.output and "Traceback" not in result.output


# Far from the defaults: a small room seen wide from low and steeply down, few objects.
CUSTOM_SCENE = {"num_objects": [1, 3],
                "geometry": {"hfov_deg": [85, 90], "room_side": [3, 3.5], "camera_height": [0.8, 0.9],
                             "camera_pitch_deg": [-35, -30]},
                "pseudo_depth": {"blur": 0.03, "noise": 0.0},
                "cache_mb": 0, "disk_cache": False}  # render every scene here, from no cache


def synth(out, *extra):
    return runner.invoke(app, ["data", "synth", "--out", str(out), "--count", "3", "--split", "val",
                               "--first", "5", *extra])


def read_folder(out) -> dict[str, dict[str, np.ndarray]]:
    """{scene name: {folder: values}} of a written folder."""
    scenes: dict[str, dict[str, np.ndarray]] = {}
    for folder in ("images", "depth", "gt_depth", "labels"):
        for path in sorted((out / folder).glob("*.png")):
            with Image.open(path) as image:
                scenes.setdefault(path.stem, {})[folder] = np.array(image)
    return scenes


def test_synth_with_a_jobs_scene_settings_writes_the_scenes_its_synthetic_source_draws(tmp_path):
    scene_file = tmp_path / "scene.yaml"
    scene_file.write_text(yaml.safe_dump({"synthetic": CUSTOM_SCENE}))
    custom, default = tmp_path / "custom", tmp_path / "default"
    result = synth(custom, "--scene", str(scene_file), "--set", "geometry.object_distance=[1, 2]",
                   "--size", "24x32")
    assert result.exit_code == 0, result.output
    assert synth(default, "--size", "24x32").exit_code == 0

    # The job's block: the file's with the --set applied, as `sgmim train --set` would.
    block = {**CUSTOM_SCENE, "geometry": {**CUSTOM_SCENE["geometry"], "object_distance": [1, 2]}}
    pretrain = SyntheticSource(PretrainDataConfig(source="synthetic", num_images=3, seed=5,
                                                  synthetic=block), (24, 32), "val")
    labelled = SyntheticLabelledSource(DownstreamDataConfig(
        dataset="synthetic", num_images=3, seed=5, synthetic={**block, "render_size": [24, 32]}), "val")
    written = read_folder(custom)
    assert sorted(written) == [pretrain.name(i) for i in range(3)]
    for i in range(3):
        scene, images, labels = written[pretrain.name(i)], pretrain.get(i), labelled.get(i)
        np.testing.assert_array_equal(scene["images"], images["rgb"])
        np.testing.assert_array_equal(scene["depth"], np.round(images["depth"] * 65535).astype(np.uint16))
        np.testing.assert_array_equal(scene["gt_depth"],
                                      np.round(labels["depth"] * GT_DEPTH_SCALE).astype(np.uint16))
        np.testing.assert_array_equal(scene["labels"], labels["label"])

    defaults = read_folder(default)
    for name, scene in written.items():
        assert not np.array_equal(scene["images"], defaults[name]["images"])
        assert not np.array_equal(scene["gt_depth"], defaults[name]["gt_depth"])


JOBS = Path(__file__).parents[2] / "examples" / "jobs"


def test_synth_from_a_job_spec_renders_the_scenes_and_size_that_job_trains_on(tmp_path):
    job = yaml.safe_load((JOBS / "pretrain-tiny.yaml").read_text())
    job["config"]["data"]["synthetic"] = {"num_objects": [1, 2], "cache_mb": 0, "disk_cache": False}
    spec = tmp_path / "pretrain.yaml"
    spec.write_text(yaml.safe_dump(job))
    result = synth(tmp_path / "out", "--scene", str(spec), "--set", "geometry.room_side=[3, 4]")
    assert result.exit_code == 0, result.output

    # no --size and no render_size: the job renders at its encoder's input, 64 px
    block = {**job["config"]["data"]["synthetic"], "geometry": {"room_side": [3, 4]}}
    source = SyntheticSource(PretrainDataConfig(num_images=3, seed=5, synthetic=block), (64, 64), "val")
    written = read_folder(tmp_path / "out")
    assert sorted(written) == [source.name(i) for i in range(3)]
    for i in range(3):
        np.testing.assert_array_equal(written[source.name(i)]["images"], source.get(i)["rgb"])


def test_synth_from_a_fine_tuning_spec_takes_its_render_size_without_its_parent(tmp_path):
    result = synth(tmp_path / "out", "--scene", str(JOBS / "finetune-depth-tiny.yaml"))
    assert result.exit_code == 0, result.output   # init: parent, and no parent: not needed here
    images = sorted((tmp_path / "out" / "images").glob("*.png"))
    assert len(images) == 3
    with Image.open(images[0]) as image:
        assert image.size == (64, 64), "the spec's render_size"


def test_synth_from_a_job_spec_takes_set_paths_as_submit_writes_them(tmp_path):
    """With a whole job spec, `config.data.synthetic.x=v` (the path `sgmim submit --set` takes)
    sets what `x=v` sets; another path of the spec is no scene setting, said in one line."""
    spec = str(JOBS / "pretrain-tiny.yaml")
    inside = synth(tmp_path / "inside", "--scene", spec, "--set", "render_size=48")
    full = synth(tmp_path / "full", "--scene", spec, "--set", "config.data.synthetic.render_size=48")
    assert (inside.exit_code, full.exit_code) == (0, 0), inside.output + full.output
    written, expected = read_folder(tmp_path / "full"), read_folder(tmp_path / "inside")
    assert written.keys() == expected.keys()
    for name, scene in written.items():
        assert scene["images"].shape[:2] == (48, 48)
        np.testing.assert_array_equal(scene["images"], expected[name]["images"])

    other = synth(tmp_path / "other", "--scene", spec, "--set", "config.data.seed=3")
    assert other.exit_code == 2, other.output
    assert other.stderr.splitlines() == [
        "error: invalid scene settings: --set 'config.data.seed=3': config.data.seed is not a scene "
        "setting; --set takes paths inside the synthetic block (e.g. render_size=96, or "
        "config.data.synthetic.render_size=96)"]
    assert not (tmp_path / "other").exists(), "nothing is written"


@pytest.mark.parametrize(("job", "assignment", "message"), [
    ({"kind": "finetune", "config": {"data": {"dataset": "kitti", "root": "/data/kitti"}}}, None,
     "config.data: this finetune job reads kitti data, not synthetic scenes"),
    ({"kind": "evaluate", "config": {"init": "parent"}}, None,
     "config.data: this evaluate job has no data section of its own"),
    ({"kind": "pretrain", "config": {}}, "geometry.room_height=[1, 2]",
     "config.data.synthetic.geometry.room_height: room_height must be (low, high) inside [2.4, 10]"),
    ({"kind": "study", "config": {}}, None, "kind: unknown job kind 'study'"),
])
def test_synth_refuses_a_job_spec_without_usable_scenes_in_one_line(tmp_path, job, assignment, message):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"name": "x", **job}))
    result = synth(tmp_path / "out", "--scene", str(spec), *(["--set", assignment] if assignment else []))
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: invalid scene settings: {message}"), line
    assert not (tmp_path / "out").exists(), "nothing is written"


def spec_message(synthetic: dict) -> str:
    """What a job spec with this `synthetic:` block is told, paths from `synthetic.` on."""
    with pytest.raises(SpecError) as info:
        parse_spec({"kind": "pretrain", "name": "x", "config": {"data": {"synthetic": synthetic}}})
    return str(info.value).replace("config.data.synthetic", "synthetic")


@pytest.mark.parametrize(("assignment", "synthetic"), [
    ("geometry.room_side=[1, 5]", {"geometry": {"room_side": [1, 5]}}),
    ("geometry.hfov=70", {"geometry": {"hfov": 70}}),
    ("num_objects=[4, 1]", {"num_objects": [4, 1]}),
    ("pseudo_depth.blur=yes", {"pseudo_depth": {"blur": "yes"}}),
    ("render_size=4", {"render_size": 4}),
])
def test_synth_refuses_a_bad_scene_value_as_a_job_spec_does(tmp_path, assignment, synthetic):
    result = synth(tmp_path / "out", "--set", assignment)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: invalid scene settings: {spec_message(synthetic)}"]
    assert not (tmp_path / "out").exists(), "nothing is written"


@pytest.mark.parametrize(("scene", "assignment", "message"), [
    ({"synthetc": {"num_objects": [1, 2]}}, "num_objects=[1, 2]", "synthetc: unknown key; did you mean "
                                                                  "'synthetic'?"),
    ({"synthetic": {"geometry": {"room_height": [2, 3]}}}, "num_objects=[1, 2]",
     "synthetic.geometry.room_height: room_height must be (low, high) inside [2.4, 10]"),
    ({}, "geometry.room_side=[3,", "--set 'geometry.room_side=[3,': not valid YAML: "),
    ({}, "geometry", "--set 'geometry': expected key.path=value"),
    (None, "num_objects=[1, 2]", "cannot read"),
])
def test_synth_refuses_a_bad_scene_file_or_assignment_in_one_line(tmp_path, scene, assignment, message):
    scene_file = tmp_path / "scene.yaml"
    if scene is not None:
        scene_file.write_text(yaml.safe_dump(scene))
    result = synth(tmp_path / "out", "--scene", str(scene_file), "--set", assignment)
    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: invalid scene settings: {message}"), line
    assert "Traceback" not in result.output


def test_synth_manifest_records_the_scene_settings_and_grows_with_more_seeds(tmp_path):
    out = tmp_path / "out"
    assert synth(out, "--size", "16", "--set", "geometry.hfov_deg=[75, 75]").exit_code == 0
    manifest = json.loads((out / "meta.json").read_text())
    base = SEEDS_PER_SPLIT  # the val split's range
    assert manifest["split"] == "val" and manifest["seeds"] == [[base + 5, base + 8]]
    assert manifest["count"] == 3
    settings = SyntheticConfig.model_validate(manifest["synthetic"])  # a job spec's block as it is
    assert settings.geometry.hfov_deg == (75, 75) and settings.render_size == (16, 16)
    assert settings == SyntheticConfig(render_size=(16, 16), geometry={"hfov_deg": (75, 75)})

    # The manifest's block, as a scene file, renders more of the same scenes into the folder.
    (tmp_path / "again.yaml").write_text(json.dumps({"synthetic": manifest["synthetic"]}))
    more = runner.invoke(app, ["data", "synth", "--out", str(out), "--count", "4", "--split", "val",
                               "--first", "8", "--scene", str(tmp_path / "again.yaml")])
    assert more.exit_code == 0, more.output
    grown = json.loads((out / "meta.json").read_text())
    assert grown["seeds"] == [[base + 5, base + 12]] and grown["count"] == 7
    assert len(list((out / "images").glob("*.png"))) == 7


def test_synth_refuses_to_mix_other_scene_settings_into_a_folder(tmp_path):
    out = tmp_path / "out"
    assert synth(out, "--size", "16").exit_code == 0
    before = (out / "meta.json").read_text()
    other = synth(out, "--size", "16", "--first", "9", "--set", "geometry.room_side=[5, 7]")
    assert other.exit_code == 1
    assert other.stderr.splitlines() == [
        f"error: {out} holds scenes rendered otherwise (synthetic.geometry.room_side: [4.0, 6.0] there, "
        "[5.0, 7.0] now); render into another folder"]
    assert (out / "meta.json").read_text() == before
    assert len(list((out / "images").glob("*.png"))) == 3

    unrecorded = tmp_path / "unrecorded"  # an earlier sgmim's manifest: settings unknown
    unrecorded.mkdir()
    (unrecorded / "meta.json").write_text(json.dumps({"generator": "sgmim.data.synthetic", "split": "val",
                                                      "first_seed": 0, "count": 3}))
    old = synth(unrecorded, "--size", "16", "--first", "9")
    assert old.exit_code == 1 and "does not record the scenes' settings" in old.stderr
    assert not (unrecorded / "images").exists()


@pytest.fixture(scope="module")
def tiny_dpt(tmp_path_factory):
    """A randomly initialised DPT saved the way a real one is: config, weights, preprocessor."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    path = tmp_path_factory.mktemp("tiny-dpt")
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16, backbone_out_indices=[0, 1, 2, 3],
                       reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def pseudo_depth(images, out, model, *extra):
    return runner.invoke(app, ["data", "pseudo-depth", "--images", str(images), "--out", str(out),
                               "--model", str(model), "--batch-size", "2", "--device", "cpu", *extra])


def test_pseudo_depth_writes_the_mirrored_folder_and_resumes(tmp_path, tiny_dpt, rng):
    images, out = tmp_path / "images", tmp_path / "depth"
    sizes = {"a/x.jpg": (40, 56), "a/y.png": (40, 56), "b/z.png": (30, 30)}
    for name, shape in sizes.items():
        save_rgb(images / name, rng.integers(0, 256, (*shape, 3)))
    result = pseudo_depth(images, out, tiny_dpt)
    assert result.exit_code == 0, result.output
    assert "wrote 3, already done 0" in result.output
    for name, shape in sizes.items():
        with Image.open(out / name.replace(".jpg", ".png")) as depth:
            assert depth.mode == "I;16" and depth.size == shape[::-1]
            values = np.asarray(depth)
            assert values.min() == 0 and values.max() == 65535, "normalised per image to [0, 1]"

    (out / "b/z.png").unlink()
    again = pseudo_depth(images, out, tiny_dpt)
    assert "wrote 1, already done 2" in again.output


def test_pseudo_depth_skips_an_unreadable_image_and_counts_it(tmp_path, tiny_dpt, rng):
    images = tmp_path / "images"
    save_rgb(images / "good.png", rng.integers(0, 256, (32, 32, 3)))
    (images / "bad.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    result = pseudo_depth(images, tmp_path / "depth", tiny_dpt)
    assert result.exit_code == 0, result.output
    assert "wrote 1, already done 0, unreadable 1" in result.output
    strict = pseudo_depth(images, tmp_path / "depth2", tiny_dpt, "--strict")
    assert strict.exit_code == 1 and "bad.jpg: cannot be read" in strict.output


def test_pseudo_depth_with_a_bad_model_path_fails_cleanly(tmp_path):
    save_rgb(tmp_path / "images/a.png", np.zeros((8, 8, 3)))
    result = pseudo_depth(tmp_path / "images", tmp_path / "depth", tmp_path / "no-model")
    assert result.exit_code == 1 and "expected a transformers model folder" in result.output
    assert "Traceback" not in result.output
