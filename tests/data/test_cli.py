"""`sgmim data synth` and `sgmim data pseudo-depth` end to end (a tiny random DPT, no download)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sgmim.cli import app
from sgmim.data import build_downstream_dataset, build_pretrain_dataset
from sgmim.models import MaskGenerator
from sgmim.spec import DownstreamDataConfig, PretrainDataConfig

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
