"""Where fine-tuning and evaluation weights come from: every bad init fails before any work
with a message naming the file (the service's 404/409/422 on parents is tested in tests/service)."""

import json
import subprocess
import sys

import pytest
import torch

from sgmim.models import SGMIM
from sgmim.models.downstream import DownstreamModel, HeadSpec
from sgmim.spec import parse_spec
from sgmim.spec.model import EncoderConfig
from sgmim.train.distributed import DistEnv
from sgmim.train.evaluate import load_finetuned
from sgmim.train.finetune import FinetuneTask
from sgmim.train.pretrain import PretrainTask
from sgmim.train.weights import InitError
from tests.finetune.conftest import ROOT, TINY, example, safetensors_metadata, write_spec

ENV = DistEnv(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """A tiny pretraining export written by PretrainTask.export (the real export code path)."""
    monkey = pytest.MonkeyPatch()
    monkey.setenv("SGMIM_JOB_ID", "pre-7")
    name, kwargs = TINY["swin"]
    spec = parse_spec({"kind": "pretrain", "name": "p", "config": {
        "model": {"encoder": {"timm_name": name, **kwargs}, "mask": {"mask_patch_size": 16}},
        "schedule": {"steps": 1}}})
    run_dir = tmp_path_factory.mktemp("pretrain")
    model = SGMIM(spec.config.model)
    PretrainTask(spec, ENV).export(model.state_dict(), run_dir, step=3)
    monkey.undo()
    return run_dir / "export" / "encoder.safetensors", model


def finetune_spec(**config):
    data = example("finetune-depth-tiny.yaml", **{"parent.job_id": "pre-7"})
    data["config"].update(config)
    return parse_spec(data)


def test_pretrain_export_records_kind_and_lineage(encoder_file):
    path, model = encoder_file
    meta = safetensors_metadata(path)
    assert meta["kind"] == "encoder" and meta["job_id"] == "pre-7" and json.loads(meta["parent_chain"]) == []
    assert meta["step"] == "3" and meta["timm_model"] == TINY["swin"][0]


def test_finetune_loads_the_encoder_and_records_the_chain(encoder_file):
    path, pretrained = encoder_file
    task = FinetuneTask(finetune_spec(init="parent", init_path=str(path)), ENV)
    assert task.parent_chain == ["pre-7"]
    model = task.build_model()
    expected = pretrained.encoder.encoder_state_dict()
    got = model.encoder_state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert task.head.max_depth == 12.0 and task.head.norm == "batch" and task.head.channels == 32
    assert model.input_size == (64, 64)


def test_unresolved_parent_is_a_clear_error():
    with pytest.raises(InitError, match="parent job pre-7 was not resolved to a file: submit through the "
                                        "service, or use init: file with init_path"):
        FinetuneTask(finetune_spec(init="parent"), ENV)


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(InitError, match=f"init file {missing} does not exist"):
        FinetuneTask(finetune_spec(init="file", init_path=str(missing)), ENV)
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not a tensor file")
    with pytest.raises(InitError, match=f"init file {junk} is not a safetensors file"):
        FinetuneTask(finetune_spec(init="file", init_path=str(junk)), ENV)


def test_wrong_architecture_names_the_path(encoder_file):
    path, _ = encoder_file
    task = FinetuneTask(finetune_spec(init="file", init_path=str(path), encoder={"embed_dim": 48}), ENV)
    with pytest.raises(InitError, match=f"init file {path} does not fit the encoder"):
        task.build_model()


def test_wrong_kinds_fail_clearly(encoder_file, tmp_path):
    path, _ = encoder_file
    # a fine-tuned model as a fine-tuning init
    head = HeadSpec("glpdepth", 16, "batch", max_depth=12.0)
    model = DownstreamModel(*TINY["swin"], head)
    from sgmim.train.checkpoint import write_safetensors

    finetuned = tmp_path / "model.safetensors"
    name, kwargs = TINY["swin"]
    write_safetensors(finetuned, model.state_dict(), {
        "kind": "finetuned", "timm_model": name, "timm_kwargs": json.dumps(kwargs),
        "head": json.dumps(head.to_dict()), "step": "1"})
    with pytest.raises(InitError, match="is a fine-tuned model .* but this job needs an encoder export"):
        FinetuneTask(finetune_spec(init="file", init_path=str(finetuned)), ENV)
    # an encoder as an evaluation init
    with pytest.raises(InitError, match="is an encoder export .* but this job needs a fine-tuned model"):
        load_finetuned(path)
    loaded, found = load_finetuned(finetuned)
    assert found.kind == "finetuned" and torch.equal(loaded.head.last[2].weight, model.head.last[2].weight)


def test_random_init_only_when_asked():
    spec = finetune_spec(init="random", encoder={"timm_name": TINY["vit"][0], **TINY["vit"][1]})
    task = FinetuneTask(spec, ENV)
    assert task.weights is None and task.parent_chain == ["pre-7"]
    assert task.build_model().backbone.embed_dim == 64
    with pytest.raises(Exception, match="init: random needs encoder.timm_name"):
        finetune_spec(init="random")


def test_random_init_of_simmims_vit_gets_simmims_layout():
    # the random-init baseline has the pretrained encoder's architecture
    size = {k: TINY["simmim_vit"][1][k] for k in ("img_size", "embed_dim", "depth", "num_heads")}
    spec = finetune_spec(init="random", encoder={"timm_name": "beit_base_patch16_224", **size})
    task = FinetuneTask(spec, ENV)
    backbone = task.build_model().backbone
    assert backbone.pos_embed is None and backbone.rel_pos_bias is not None
    assert task.timm_kwargs["init_values"] == 0.1


def test_swinv2_gets_its_pretraining_windows_when_the_window_grows():
    from sgmim.train.finetune import _swinv2_pretrained_windows

    recorded = EncoderConfig(timm_name="swinv2_base_window8_256", img_size=192, window_size=12).timm_kwargs()
    grown = _swinv2_pretrained_windows(recorded, {"window_size": 16})
    assert grown["pretrained_window_sizes"] == (12, 12, 12, 6)
    assert _swinv2_pretrained_windows(recorded, {"window_size": 12}) == {}


@pytest.mark.slow
def test_trainer_exits_2_before_any_work_on_an_unresolved_parent(tmp_path):
    spec = write_spec(example("finetune-depth-tiny.yaml", **{"parent.job_id": "pre-9"}), tmp_path / "ft.yaml")
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "sgmim.train", str(spec), "--run-dir", str(run_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "parent job pre-9 was not resolved to a file" in (run_dir / "train.log").read_text()
    assert not (run_dir / "ds_config.json").exists() and not (run_dir / "metrics.jsonl").exists()
