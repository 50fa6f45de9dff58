"""A training step never makes the host wait for the device, so the host queues the next step's
work while the GPU runs this one (issue 13), and no epoch starts with the loader's prefetching
restarted. The GPU's own detector is torch's
`set_sync_debug_mode`; here, on the CPU, step_waits_probe.py records every call that would wait
there, inside the real trainer's step, for each job kind on one process (ZeRO stage 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sgmim import rundir
from sgmim.train.trainer import norm_and_clip

ROOT = Path(__file__).parents[2]
JOBS = ROOT / "examples" / "jobs"
TINY_ENCODER = {"timm_name": "swin_tiny_patch4_window7_224", "img_size": 64, "window_size": 4,
                "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8]}


def short_spec(example: str, folder: Path, accumulation: int = 1) -> Path:
    """An example job cut to 6 optimiser steps of batch 4 on 16 scenes, with clipping on;
    fine-tuning from a random encoder."""
    data = yaml.safe_load((JOBS / f"{example}.yaml").read_text())
    config = data["config"]
    config["schedule"].update({"steps": 6, "epochs": None, "log_every": 3, "batch_size": 4,
                               "accumulation": accumulation})
    config.setdefault("optim", {})["clip_grad"] = 0.5
    config.setdefault("deepspeed", {})["zero_stage"] = "auto"
    config["data"]["num_images"] = 16
    if data["kind"] == "finetune":
        config.update(init="random", encoder=TINY_ENCODER)
        config["eval"] = {"batch_size": 8}
    path = folder / f"{example}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_a_training_step_never_waits_for_the_device_nor_an_epoch_for_the_loader(tmp_path):
    # pretraining accumulates 2 micro-batches per step: the steps between updates too
    specs = [short_spec("pretrain-tiny", tmp_path, accumulation=2),
             short_spec("finetune-depth-tiny", tmp_path), short_spec("finetune-seg-tiny", tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), rundir.ENV_LOG_TO_STDOUT: "0"}
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("step_waits_probe.py")),
                          str(tmp_path / "runs"), *map(str, specs)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=400)
    reports = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(reports) == len(specs), out.stdout[-2000:] + out.stderr[-3000:]
    for report in reports:
        assert report["exit"] == 0, report
        micro_steps = 12 if report["spec"] == "pretrain-tiny.yaml" else 6
        assert report["steps"] == micro_steps, report  # the probe saw every micro-batch
        # DeepSpeed's throughput timer, its stage-0 clipping and the fine-tuning losses' checks
        # each used to wait here; one process has no gradient to all-reduce either
        assert report["waits"] == {}, report
        assert report["allreduces"] == 0, report
        # several epochs, read in one DataLoader pass
        info = json.loads((tmp_path / "runs" / Path(report["spec"]).stem / rundir.RUN_INFO).read_text())
        assert info["total_steps"] > info["steps_per_epoch"], info
        assert report["loader_passes"] == 1, report


def gradients(*norms: float) -> list[torch.nn.Parameter]:
    params = []
    for value in norms:
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.full((4,), value / 2)         # 2-norm of (v/2, v/2, v/2, v/2) = v
        params.append(p)
    return params


def total(params) -> float:
    return torch.linalg.vector_norm(torch.cat([p.grad for p in params])).item()


def test_norm_and_clip_returns_the_norm_before_clipping_and_scales_to_the_limit():
    params = gradients(3.0, 4.0)                      # together: 5
    norm = norm_and_clip(params, max_norm=1.0)
    assert norm.item() == pytest.approx(5.0)
    assert total(params) == pytest.approx(1.0, rel=1e-5)
    assert params[1].grad[0].item() / params[0].grad[0].item() == pytest.approx(4 / 3)

    below = gradients(0.3, 0.4)
    assert norm_and_clip(below, max_norm=1.0).item() == pytest.approx(0.5)
    assert total(below) == pytest.approx(0.5)         # under the limit: untouched

    unclipped = gradients(3.0, 4.0)
    assert norm_and_clip(unclipped, max_norm=None).item() == pytest.approx(5.0)
    assert total(unclipped) == pytest.approx(5.0)


def test_stage_0_is_clipped_by_the_trainer_and_untimed_by_deepspeed():
    from sgmim.spec.train import DeepSpeedConfig
    from sgmim.train.distributed import DistEnv
    from sgmim.train.ds_config import build_ds_config, trainer_clips

    schedule = type("S", (), {"batch_size": 4, "accumulation": 1})()
    gpu = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cuda", 0))
    one = build_ds_config(DeepSpeedConfig(), schedule, 5.0, gpu)
    assert one["zero_optimization"]["stage"] == 0 and one["gradient_clipping"] == 0.0
    assert trainer_clips(0, "bf16") and trainer_clips(0, "fp32")
    assert one["timers"]["throughput"]["enabled"] is False
    many = build_ds_config(DeepSpeedConfig(), schedule, 5.0, DistEnv(0, 2, 0, gpu.device))
    assert many["zero_optimization"]["stage"] == 2 and many["gradient_clipping"] == 5.0
    fp16 = build_ds_config(DeepSpeedConfig(precision="fp16"), schedule, 5.0, gpu)
    assert fp16["gradient_clipping"] == 5.0 and not trainer_clips(0, "fp16")  # unscales first
