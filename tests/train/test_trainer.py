"""The trainer as users run it (`sgmim train`), on CPU with the gloo backend."""

import json
import math
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.train.conftest import ROOT, SIDE_BY_SIDE, metric_lines, start_training, tiny_spec, train, wait_for

pytestmark = pytest.mark.slow

STEP_FIELDS = {"step", "epoch", "loss", "loss_img", "loss_struct", "lr", "grad_norm",
               "images_per_s", "time"}


def test_two_process_zero2_kill_and_resume(tmp_path):
    # 20 steps: the kill comes at the first checkpoint (step 4), 16 steps before the end
    spec = tiny_spec(tmp_path, schedule={"steps": 20, "epochs": None, "log_every": 1,
                                         "checkpoint_every": 4, "keep_checkpoints": 2})
    run_dir = tmp_path / "run"
    proc = start_training(spec, run_dir, nproc=2)
    latest = run_dir / "checkpoints" / "latest"
    try:
        wait_for(latest.exists, 180, "the first checkpoint")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_run = {m["step"]: m for m in metric_lines(run_dir) if "loss" in m}
    resume_step = int(latest.read_text().strip().removeprefix("global_step"))
    assert not (run_dir / "export").exists()

    code, out = train(spec, run_dir, nproc=2)
    assert code == 0, out
    info = json.loads((run_dir / "run_info.json").read_text())
    assert 4 <= resume_step < 20
    assert info["start_step"] == resume_step and info["total_steps"] == 20
    lines = [m for m in metric_lines(run_dir) if "loss" in m]
    second_run = lines[len(first_run):]
    assert second_run[0]["step"] == resume_step + 1, "the step counter continues"
    assert second_run[-1]["step"] == 20
    for line in second_run:
        if line["step"] in first_run:  # re-run steps see the same weights, LR and data
            before = first_run[line["step"]]
            assert line["lr"] == pytest.approx(before["lr"], rel=1e-9)
            assert line["loss"] == pytest.approx(before["loss"], rel=1e-4)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("global_step*")) == \
        ["global_step16", "global_step20"], "keeps the last 2"
    assert (run_dir / "export" / "encoder.safetensors").exists()


def test_loader_workers_change_nothing_across_epochs(tmp_path):
    """Data is a function of (seed, epoch, index): a loader worker reading the whole run in one
    pass takes each item's epoch from its key, so the losses equal those of the in-process
    loader. The two runs share nothing, so they run side by side."""

    def losses(workers: int) -> list[float]:
        spec = tiny_spec(tmp_path, f"spec{workers}.yaml", data={"num_images": 64, "num_workers": workers},
                         schedule={"steps": 8, "epochs": None, "log_every": 1, "checkpoint_every": None})
        code, out = train(spec, tmp_path / f"run{workers}", extra_env=SIDE_BY_SIDE)
        assert code == 0, out
        return [m["loss"] for m in metric_lines(tmp_path / f"run{workers}") if "loss" in m]

    with ThreadPoolExecutor(1) as pool:
        with_worker = pool.submit(losses, 1)
        in_process = losses(0)
        assert len(in_process) == 8, "4 epochs of 2 steps"
        assert with_worker.result() == pytest.approx(in_process, rel=1e-4)


def test_metrics_jsonl_fields_and_export(tmp_path):
    spec = tiny_spec(tmp_path, schedule={"steps": 6, "epochs": None, "log_every": 2},
                     data={"num_images": 64})
    run_dir = tmp_path / "run"
    code, out = train(spec, run_dir)
    assert code == 0, out
    lines = metric_lines(run_dir)
    raw = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len(raw)
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == [2, 4, 6]
    for m in steps:
        assert set(m) >= STEP_FIELDS, m
        assert all(isinstance(m[k], int | float) for k in STEP_FIELDS)
    epochs = [m for m in lines if "epoch_time" in m]
    assert [m["step"] for m in epochs] == [2, 4, 6] and all(m["epoch_time"] > 0 for m in epochs)
    assert json.loads((run_dir / "ds_config.json").read_text())["zero_optimization"]["stage"] == 0, \
        "zero_stage auto: nothing to shard with one process"
    assert "train.log" in os.listdir(run_dir) and "step 6/6" in (run_dir / "train.log").read_text()

    path = run_dir / "export" / "encoder.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["step"] == "6" and json.loads(meta["sgmim_spec"])["name"] == "pretrain-tiny"
    model = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"]))
    model.load_state_dict(load_file(str(path)), strict=True)


def test_zero_stage_1_trains(tmp_path):
    """Stage 1 here; stage 0 trains in test_metrics_jsonl_fields_and_export, 2 in the resume
    tests, 3 in test_zero3_consolidated_weights_equal_the_live_model (the same trainer, and the
    stage a spec names is the stage it gets: test_throughput_options)."""
    spec = tiny_spec(tmp_path, schedule={"steps": 2, "epochs": None, "log_every": 1},
                     deepspeed={"zero_stage": 1}, data={"num_images": 64})
    code, out = train(spec, tmp_path / "run")
    assert code == 0, out
    assert [m["step"] for m in metric_lines(tmp_path / "run") if "loss" in m] == [1, 2]


def test_zero3_consolidated_weights_equal_the_live_model(tmp_path):
    spec = tiny_spec(tmp_path, schedule={"steps": 3, "epochs": None, "log_every": 1},
                     deepspeed={"zero_stage": 3}, data={"num_images": 64})
    code, out = train_check(spec, tmp_path / "run", nproc=2)
    assert code == 0, out
    assert "consolidated == live: True" in out, out
    assert [m["step"] for m in metric_lines(tmp_path / "run") if "loss" in m] == [1, 2, 3]


def train_check(spec, run_dir, nproc):
    import subprocess

    from sgmim.train.launch import Launch, command, environment

    launch = Launch(nproc_per_node=nproc)
    argv = command(spec, run_dir, launch)
    argv[argv.index("sgmim.train")] = "tests.train.zero3_check"
    done = subprocess.run(argv, env=environment(launch), capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    return done.returncode, done.stdout + done.stderr


def test_nonfinite_loss_stops_naming_the_step(tmp_path):
    spec = tiny_spec(tmp_path, optim={"base_lr": 10.0, "lr_reference_batch": 1, "clip_grad": None,
                                      "warmup_epochs": 0},
                     schedule={"steps": 12, "epochs": None, "log_every": 1, "checkpoint_every": 1},
                     data={"num_images": 64})
    code, out = train(spec, tmp_path / "run")
    assert code == 3, out
    last = (tmp_path / "run" / "train.log").read_text().strip().splitlines()[-1]
    assert "not finite at step" in last
    bad_step = int(last.split("at step ")[1].split(";")[0])
    saved = [int(p.name.removeprefix("global_step"))
             for p in (tmp_path / "run" / "checkpoints").glob("global_step*")]
    assert saved and all(s < bad_step for s in saved), (saved, bad_step)
    assert not (tmp_path / "run" / "export").exists()


def test_bad_spec_stops_before_any_work(tmp_path):
    spec = tiny_spec(tmp_path, optim={"base_lr": -1.0})
    code, out = train(spec, tmp_path / "run")
    assert code == 2
    assert "config.optim.base_lr" in out and "Traceback" not in out
    assert not (tmp_path / "run").exists()


def test_dataset_smaller_than_a_step_is_a_clear_error(tmp_path):
    spec = tiny_spec(tmp_path, data={"num_images": 8})
    code, out = train(spec, tmp_path / "run")
    assert code == 2
    assert "fewer than one optimiser step" in (tmp_path / "run" / "train.log").read_text()
    assert "Traceback" not in (tmp_path / "run" / "train.log").read_text()


LAUNCHER_ONLY = """
import subprocess, sys
from sgmim.cli import app
subprocess.call = lambda argv, **kwargs: 0  # the ranks import torch; their launcher need not
try:
    app(["train", sys.argv[1], "--run-dir", sys.argv[2]])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("torch imported:", "torch" in sys.modules)
"""


def test_the_launcher_does_not_import_torch(tmp_path):
    """`sgmim train` only validates the spec and starts the ranks: importing torch there
    would add seconds to every run before the ranks even start."""
    argv = [sys.executable, "-c", LAUNCHER_ONLY, str(tiny_spec(tmp_path)), str(tmp_path / "run")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "torch imported: False" in done.stdout, done.stdout
    assert (tmp_path / "run" / "spec.json").exists()


def test_a_rank_whose_launcher_is_gone_exits_before_training(tmp_path):
    """A rank that torchrun started but that torchrun's death left to another parent (here:
    started by a plain Python process, as after adoption) exits at once instead of training
    alone, and does so before importing torch."""
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "orphan", "RANK": "0", "LOCAL_RANK": "0",
           "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}
    argv = [sys.executable, "-X", "importtime", "-m", "sgmim.train", str(tiny_spec(tmp_path)),
            "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "the rank's launcher (torchrun) is gone" in done.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "sgmim.train.launch" in imported and "torch" not in imported
    assert not (tmp_path / "run" / "train.log").exists()


def test_lr_schedule_shapes():
    from sgmim.spec.train import OptimConfig
    from sgmim.train.optim import LRSchedule

    cfg = OptimConfig(base_lr=2e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=10, warmup_prefix=True)
    lr = LRSchedule.from_config(cfg, total_batch=1024, steps_per_epoch=100, total_steps=10_000)
    assert lr.peak_lr == pytest.approx(4e-4) and lr(0) == pytest.approx(2e-6)
    assert lr(1000) == pytest.approx(4e-4)
    assert lr(10_000) == pytest.approx(2e-5)
    assert lr(5500) == pytest.approx(2e-5 + (4e-4 - 2e-5) * 0.5)
    assert lr(3000) == pytest.approx(3.555e-4, rel=1e-3)  # the figure for this shape
    step = LRSchedule.from_config(OptimConfig(schedule="step", step_milestones=[70], warmup_epochs=0),
                                  total_batch=512, steps_per_epoch=10, total_steps=800)
    assert step(699) == pytest.approx(2e-4) and step(700) == pytest.approx(2e-5)


def test_simmim_vit_export_and_finetune_load_from_the_metadata(tmp_path):
    """SimMIM's ViT (BEiT layout) exported by a pretrain job: plain timm builds it from the
    metadata alone and loads it strictly; a fine-tuning backbone of another size takes it too."""
    import yaml

    from sgmim.models.downstream import create_backbone
    from sgmim.spec import parse_spec
    from sgmim.train.distributed import DistEnv
    from sgmim.train.pretrain import ENCODER_PREFIX, PretrainTask
    from sgmim.train.weights import load_encoder, read_weights

    data = yaml.safe_load(tiny_spec(tmp_path).read_text())
    data["config"]["model"]["encoder"] = {"timm_name": "beit_base_patch16_224", "img_size": 64,
                                          "embed_dim": 64, "depth": 2, "num_heads": 2}
    task = PretrainTask(parse_spec(data), DistEnv(0, 1, 0, torch.device("cpu")))
    model = task.build_model()
    task.export({ENCODER_PREFIX + k: v for k, v in model.encoder_state_dict().items()}, tmp_path, step=3)
    path = tmp_path / "export" / "encoder.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    plain = timm.create_model(meta["timm_model"], **json.loads(meta["timm_kwargs"]))
    plain.load_state_dict(load_file(str(path)), strict=True)
    assert plain.pos_embed is None and plain.rel_pos_bias is not None
    found = read_weights(path, "encoder")
    wider = create_backbone(found.timm_name, {**found.timm_kwargs, "img_size": (96, 128)})
    load_encoder(wider, found.load(), path, "beit 96x128")
    assert wider.rel_pos_bias.relative_position_bias_table.shape == ((2 * 6 - 1) * (2 * 8 - 1) + 3, 2)


def simmim_cosine_lr(t: int, base: float, warmup_init: float, lr_min: float, warmup_t: int,
                     t_initial: int) -> float:
    """SimMIM's LR at update t: timm's CosineLRScheduler(t_initial, lr_min, warmup_lr_init,
    warmup_t, cycle_limit=1, t_in_epochs=False), warmup_prefix False, written out."""
    if t < warmup_t:
        return warmup_init + t * (base - warmup_init) / warmup_t
    if t >= t_initial:
        return lr_min
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t / t_initial))


def test_cosine_lr_follows_simmim_by_default():
    from timm.scheduler import CosineLRScheduler

    from sgmim.spec.train import OptimConfig
    from sgmim.train.optim import LRSchedule

    # Swin-B 100 epochs at total batch 1024 (lr 2e-4, warm-up 1e-6, min 1e-5, all × 2), 100
    # steps per epoch: 1,000 warm-up steps of 10,000.
    cfg = OptimConfig(base_lr=2e-4, warmup_lr=1e-6, min_lr=1e-5, warmup_epochs=10)
    lr = LRSchedule.from_config(cfg, total_batch=1024, steps_per_epoch=100, total_steps=10_000)
    timm_lr = CosineLRScheduler(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=4e-4),
                                t_initial=10_000, lr_min=2e-5, warmup_lr_init=2e-6, warmup_t=1000,
                                cycle_limit=1, t_in_epochs=False)
    for t in (0, 1, 500, 999, 1000, 3000, 5000, 9999, 10_000, 12_000):
        expected = simmim_cosine_lr(t, 4e-4, 2e-6, 2e-5, 1000, 10_000)
        assert lr(t) == pytest.approx(expected, rel=1e-9), t
        assert timm_lr._get_lr(t)[0] == pytest.approx(expected, rel=1e-9), t
    assert lr(3000) == pytest.approx(3.217e-4, rel=1e-3)   # the figure (3.56e-4 before)


def test_param_groups_exempt_norms_biases_and_tokens():
    from sgmim.models import SGMIM
    from sgmim.train.optim import param_groups
    from tests.models.conftest import tiny_config

    model = SGMIM(tiny_config())
    groups = param_groups(model, 0.05, model.no_weight_decay_names())
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_id[id(named["encoder.mask_token"])] == 0.0
    assert by_id[id(named["fusion.norm_image.bias"])] == 0.0
    assert by_id[id(named["fusion.q.weight"])] == 0.05
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert torch.is_tensor(named["encoder.mask_token"])


def test_zero_stage_auto_and_resume_across_process_counts_and_stages(tmp_path):
    """auto: one process trains ZeRO-0; its checkpoint resumes on two processes (the stage is
    kept, so the optimiser state loads); a spec that asks for a stage that cannot load it is a
    clear error, not an optimiser silently started afresh. And back: two processes choose
    ZeRO-2, one process resumes it through the universal checkpoint and keeps stage 2, and two
    processes resume that one's checkpoint through the universal checkpoint again. The two chains
    share nothing, so the second runs beside the first."""
    schedule = {"steps": 4, "epochs": None, "log_every": 1, "checkpoint_every": 4}
    first = tiny_spec(tmp_path, "a.yaml", schedule=schedule, data={"num_images": 128})
    longer = tiny_spec(tmp_path, "b.yaml", schedule={**schedule, "steps": 6}, data={"num_images": 128})
    zero2 = tiny_spec(tmp_path, "c.yaml", schedule={**schedule, "steps": 8}, data={"num_images": 128},
                      deepspeed={"zero_stage": 2})
    two_first = tiny_spec(tmp_path, "d.yaml", schedule=schedule, data={"num_images": 128})
    longest = tiny_spec(tmp_path, "e.yaml", schedule={**schedule, "steps": 8}, data={"num_images": 128})
    with ThreadPoolExecutor(1) as pool:
        back = pool.submit(two_processes_then_one_then_two, two_first, longer, longest, tmp_path / "run2")
        one_process_then_two(first, longer, zero2, tmp_path / "run")
        back.result()


def one_process_then_two(first, longer, zero2, run_dir):
    code, out = train(first, run_dir, extra_env=SIDE_BY_SIDE)
    assert code == 0, out
    assert json.loads((run_dir / "run_info.json").read_text())["zero_stage"] == 0
    assert json.loads((run_dir / "checkpoints/global_step4/sgmim_zero.json").read_text()) == {"zero_stage": 0}

    code, out = train(longer, run_dir, nproc=2, extra_env=SIDE_BY_SIDE)
    assert code == 0, out
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["start_step"], info["world_size"], info["zero_stage"]) == (4, 2, 0)
    assert [m["step"] for m in metric_lines(run_dir) if "loss" in m][-2:] == [5, 6]
    assert "keeping it" in (run_dir / "train.log").read_text()

    code, out = train(zero2, run_dir, nproc=2, extra_env=SIDE_BY_SIDE)
    assert code != 0, out
    errors = [line for line in (run_dir / "train.log").read_text().splitlines() if " ERROR " in line]
    assert errors and all("written with ZeRO stage 0; this spec asks for stage 2" in e and
                          "set deepspeed.zero_stage to 0 or auto" in e for e in errors), errors


def two_processes_then_one_then_two(first, longer, longest, run_dir):
    """Stage 0 could not take ZeRO's partitioned optimiser state, so the stage is kept; a change
    of process count either way goes through the universal checkpoint."""
    code, out = train(first, run_dir, nproc=2, extra_env=SIDE_BY_SIDE)
    assert code == 0, out
    assert json.loads((run_dir / "run_info.json").read_text())["zero_stage"] == 2
    code, out = train(longer, run_dir, extra_env=SIDE_BY_SIDE)
    assert code == 0, out
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["start_step"], info["world_size"], info["zero_stage"]) == (4, 1, 2)
    assert (run_dir / "checkpoints" / "global_step4_universal").is_dir()
    assert [m["step"] for m in metric_lines(run_dir) if "loss" in m][-2:] == [5, 6]

    logged = len((run_dir / "train.log").read_text())
    code, out = train(longest, run_dir, nproc=2, extra_env=SIDE_BY_SIDE)
    assert code == 0, out
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["start_step"], info["world_size"], info["zero_stage"]) == (6, 2, 2)
    assert (run_dir / "checkpoints" / "global_step6_universal").is_dir()
    assert [m["step"] for m in metric_lines(run_dir) if "loss" in m][-2:] == [7, 8]
    assert "universal checkpoint" in (run_dir / "train.log").read_text()[logged:]
