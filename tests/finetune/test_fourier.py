"""Fourier analysis (paper Figure 3): the half-diagonal Δ log-amplitude curve and the CLI."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from sgmim.analysis.fourier import half_diagonal, log_amplitude
from sgmim.cli import app
from sgmim.models import SGMIM
from sgmim.spec import parse_spec
from sgmim.train.distributed import DistEnv
from sgmim.train.pretrain import PretrainTask
from tests.finetune.conftest import TINY


def test_half_diagonal_reads_frequency_zero_to_pi():
    h = w = 8
    rows = torch.arange(h).view(-1, 1)
    cols = torch.arange(w).view(1, -1)
    checker = (-1.0) ** (rows + cols)                        # all energy at (π, π)
    feat = (2.0 + checker).expand(3, 4, h, w).clone()        # plus a constant: energy at (0, 0)
    freq, curve = half_diagonal(log_amplitude(feat))
    assert freq.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert curve[0] == 0.0
    # |F(π, π)| = 64, |F(0, 0)| = 128
    assert curve[-1] == pytest.approx(math.log(64.0) - math.log(128.0), abs=1e-4)
    assert (curve[1:-1] < -10).all()                          # nothing in between (log 1e-6 − log 128)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    name, kwargs = TINY["swin"]
    spec = parse_spec({"kind": "pretrain", "name": "p", "config": {
        "model": {"encoder": {"timm_name": name, **kwargs}, "mask": {"mask_patch_size": 16}},
        "schedule": {"steps": 1}}})
    run_dir = tmp_path_factory.mktemp("run")
    PretrainTask(spec, DistEnv(0, 1, 0, torch.device("cpu"))).export(SGMIM(spec.config.model).state_dict(),
                                                                      run_dir, 1)
    return run_dir / "export" / "encoder.safetensors"


def test_cli_writes_json_and_png_per_stage(encoder_file, tmp_path):
    out = tmp_path / "fourier"
    result = CliRunner().invoke(app, ["analyze", "fourier", str(encoder_file), str(encoder_file),
                                      "--num-images", "2", "--out", str(out), "--labels", "sgmim,simmim"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "fourier.json").read_text())
    assert [e["label"] for e in data["encoders"]] == ["sgmim", "simmim"] and data["num_images"] == 2
    stages = data["encoders"][0]["stages"]
    assert [s["name"] for s in stages] == ["stage 1", "stage 2", "stage 3", "stage 4"]
    assert stages[0]["shape"] == [32, 16, 16] and len(stages[0]["frequency"]) == 9   # 0 … π in 8 steps
    assert all(s["delta_log_amplitude"][0] == 0.0 and s["frequency"][-1] == 1.0 for s in stages)
    assert data["encoders"][0]["stages"] == data["encoders"][1]["stages"]   # same encoder, same curve
    assert (out / "fourier.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text("{}")
    result = CliRunner().invoke(app, ["analyze", "fourier", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "is not a safetensors file" in result.output and "Traceback" not in result.output
