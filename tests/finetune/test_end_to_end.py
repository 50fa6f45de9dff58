"""A tiny pretraining run, fine-tuned and evaluated through `sgmim train` on CPU: fine-tuning
improves validation RMSE over its step-0 evaluation, exports and eval.json carry the lineage
pretrain → finetune → evaluate, and the 2-process evaluation equals the 1-process one."""

import json
import math
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sgmim.train.evaluate import load_finetuned
from tests.finetune.conftest import example, metric_lines, safetensors_metadata, sgmim_train, write_spec
from tests.train.conftest import SIDE_BY_SIDE

pytestmark = pytest.mark.slow

EVAL_FIELDS = {"task", "dataset", "split", "num_images", "metrics", "parent_chain", "job_id", "step", "flip",
               "crop", "max_depth", "created_at"}
DEPTH_METRICS = {"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """pretrain-tiny for 2 steps as job `pre-1` (the supervisor sets SGMIM_JOB_ID)."""
    tmp = tmp_path_factory.mktemp("pretrain")
    spec = write_spec(example("pretrain-tiny.yaml", **{
        "config.data.num_images": 32, "config.schedule.batch_size": 16, "config.schedule.epochs": None,
        "config.schedule.steps": 2, "config.schedule.checkpoint_every": None}), tmp / "pretrain.yaml")
    code, out = sgmim_train(spec, tmp / "run", job_id="pre-1")
    assert code == 0, out
    return tmp / "run"


def tiny_finetune(tmp, name, **patch):
    base = {"config.data.num_images": 64, "config.eval.batch_size": 64}
    return write_spec(example("finetune-depth-tiny.yaml", **{**base, **patch}), tmp / name)


def test_finetune_from_a_file_improves_rmse_and_exports(pretrained, tmp_path):
    encoder = pretrained / "export" / "encoder.safetensors"
    spec = tiny_finetune(tmp_path, "ft.yaml", **{"config.init": "file", "config.init_path": str(encoder)})
    run = tmp_path / "run"
    code, out = sgmim_train(spec, run, job_id="ft-1")
    assert code == 0, out
    lines = metric_lines(run)
    val = [line for line in lines if "val_rmse" in line]
    assert [line["step"] for line in val] == [0, 32]                   # before training and at the end
    assert val[-1]["val_rmse"] < val[0]["val_rmse"], val
    assert any("loss" in line for line in lines)

    record = json.loads((run / "eval.json").read_text())
    assert set(record) >= EVAL_FIELDS
    assert (record["task"], record["dataset"], record["split"]) == ("depth", "synthetic", "val")
    assert record["num_images"] == 64
    assert set(record["metrics"]) == DEPTH_METRICS
    assert record["metrics"]["rmse"] == pytest.approx(val[-1]["val_rmse"])
    assert record["parent_chain"] == ["pre-1"] and record["job_id"] == "ft-1" and record["step"] == 32
    assert (record["crop"], record["max_depth"], record["flip"]) == ("none", 12.0, False)

    meta = safetensors_metadata(run / "export" / "model.safetensors")
    assert meta["kind"] == "finetuned" and meta["task"] == "depth" and meta["job_id"] == "ft-1"
    assert json.loads(meta["parent_chain"]) == ["pre-1"] and meta["step"] == "32"
    assert json.loads(meta["head"])["kind"] == "glpdepth" and meta["timm_model"].startswith("swin")
    model, found = load_finetuned(run / "export" / "model.safetensors")   # loads strictly
    assert found.lineage(None) == ["pre-1", "ft-1"]
    assert json.loads(meta["timm_kwargs"])["drop_path_rate"] == 0.1          # the spec's encoder field
    assert model.backbone.layers[3].blocks[0].drop_path1.drop_prob == pytest.approx(0.1)


def test_worker_style_parent_two_processes_and_evaluate(pretrained, tmp_path):
    """init: parent with init_path filled in by the worker; 2 ranks; then an evaluate job (as
    the worker runs it) on the export reproduces the fine-tuning run's own evaluation."""
    encoder = pretrained / "export" / "encoder.safetensors"
    spec = tiny_finetune(tmp_path, "ft.yaml", **{
        "parent.job_id": "pre-1", "config.init": "parent", "config.init_path": str(encoder),
        "config.schedule.epochs": None, "config.schedule.steps": 2, "config.eval_at_start": False,
        "config.schedule.batch_size": 8})
    run = tmp_path / "ft"
    code, out = sgmim_train(spec, run, job_id="ft-2", nproc=2)
    assert code == 0, out
    trained = json.loads((run / "eval.json").read_text())
    assert trained["parent_chain"] == ["pre-1"] and trained["num_images"] == 64
    assert all(math.isfinite(v) for v in trained["metrics"].values())

    model_file = run / "export" / "model.safetensors"
    ev_spec = write_spec(example("evaluate-depth-tiny.yaml", **{
        "parent.job_id": "ft-2", "config.init_path": str(model_file), "config.eval.flip": False}),
        tmp_path / "ev.yaml")
    flipped = write_spec(example("evaluate-depth-tiny.yaml", **{
        "config.init": "file", "config.init_path": str(model_file)}), tmp_path / "ev-flip.yaml")
    ev_run = tmp_path / "ev"
    with ThreadPoolExecutor(1) as pool:  # the two evaluations share nothing: side by side
        flip_done = pool.submit(sgmim_train, flipped, tmp_path / "ev-flip", extra_env=SIDE_BY_SIDE)
        code, out = sgmim_train(ev_spec, ev_run, job_id="ev-1", extra_env=SIDE_BY_SIDE)
        assert code == 0, out
        code, out = flip_done.result()
        assert code == 0, out
    record = json.loads((ev_run / "eval.json").read_text())
    assert set(record) >= EVAL_FIELDS
    assert record["parent_chain"] == ["pre-1", "ft-2"] and record["job_id"] == "ev-1"
    assert record["num_images"] == 64 and record["step"] == 2 and record["dataset"] == "synthetic"
    # progress in the trainer's files, as the worker reads them: 64 images in batches of 32
    assert json.loads((ev_run / "run_info.json").read_text())["total_steps"] == 2
    progress = [json.loads(x) for x in (ev_run / "metrics.jsonl").read_text().splitlines()]
    assert progress[-1]["step"] == 2 and progress[-1]["images_evaluated"] == 64
    assert progress[-1]["epoch"] is None
    assert "evaluated 2/2 batches" in (ev_run / "train.log").read_text()
    for name in DEPTH_METRICS:   # 2 ranks' shares summed = one process over everything
        assert record["metrics"][name] == pytest.approx(trained["metrics"][name], rel=1e-4)

    record = json.loads((tmp_path / "ev-flip" / "eval.json").read_text())
    assert record["flip"] is True and record["parent_chain"] == ["pre-1", "ft-2"] and record["job_id"] == ""


def test_a_pretraining_checkpoint_folder_is_an_encoder_init(pretrained):
    from sgmim.spec import parse_spec
    from sgmim.train.distributed import DistEnv
    from sgmim.train.finetune import FinetuneTask

    tag = pretrained / "checkpoints" / "global_step2"
    data = example("finetune-depth-tiny.yaml", **{"parent.job_id": "pre-1", "config.init_path": str(tag)})
    task = FinetuneTask(parse_spec(data), DistEnv(0, 1, 0, torch.device("cpu")))
    model = task.build_model()
    export = load_file_dict(pretrained / "export" / "encoder.safetensors")
    got = model.encoder_state_dict()
    assert set(got) == set(export) and all(torch.equal(got[k], export[k]) for k in export)
    assert task.parent_chain == ["pre-1"]


def load_file_dict(path):
    from safetensors.torch import load_file

    return load_file(str(path))
