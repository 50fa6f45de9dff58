"""The throughput choices of the spec, each with its default: the ZeRO stage per run, compile on
GPU only and per block, the cache root of compiled kernels, fused attention."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sgmim.caches import cache_root, use_cache_root
from sgmim.models import SGMIM
from sgmim.spec.model import ModelConfig
from sgmim.spec.train import DeepSpeedConfig
from sgmim.train.checkpoint import saved_zero_stage, stages_compatible
from sgmim.train.distributed import DistEnv
from sgmim.train.ds_config import build_ds_config

ROOT = Path(__file__).parents[2]
TINY_ENCODER = {"timm_name": "swin_tiny_patch4_window7_224", "img_size": 64, "window_size": 4,
                "embed_dim": 32, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 8]}


def tiny_model(**guidance) -> SGMIM:
    return SGMIM(ModelConfig(encoder=TINY_ENCODER, mask={"mask_patch_size": 16},
                             guidance={"fusion_heads": 4, **guidance}))


def tiny_batch(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, 64, 64, generator=generator)
    depth = torch.rand(batch, 1, 64, 64, generator=generator)
    image_mask = (torch.rand(batch, 16, 16, generator=generator) < 0.6).to(torch.uint8)
    return image, depth, image_mask, 1 - image_mask


@pytest.mark.parametrize(("requested", "world", "offload", "stage"), [
    ("auto", 1, False, 0), ("auto", 2, False, 2), ("auto", 8, False, 2),
    ("auto", 1, True, 2),  # ZeRO-Offload needs a partitioned optimiser
    (2, 1, False, 2), (0, 4, False, 0), (3, 1, False, 3),
])
def test_zero_stage_is_chosen_per_run(requested, world, offload, stage):
    ds = DeepSpeedConfig(zero_stage=requested, offload_optimizer=offload)
    assert ds.resolved_zero_stage(world) == stage
    env = DistEnv(rank=0, world_size=world, local_rank=0, device=torch.device("cpu"))
    sch = type("S", (), {"batch_size": 4, "accumulation": 1})()
    assert build_ds_config(ds, sch, 1.0, env)["zero_optimization"]["stage"] == stage
    assert build_ds_config(ds, sch, 1.0, env, zero_stage=1)["zero_optimization"]["stage"] == 1


def test_defaults_are_auto():
    ds = DeepSpeedConfig()
    assert (ds.zero_stage, ds.compile, ds.compile_scope) == ("auto", "auto", "blocks")
    assert ds.resolved_compile(on_gpu=True) is True and ds.resolved_compile(on_gpu=False) is False
    assert DeepSpeedConfig(compile=True).resolved_compile(on_gpu=False) is True
    assert DeepSpeedConfig(compile=False).resolved_compile(on_gpu=True) is False


def test_saved_stage_of_a_checkpoint(tmp_path):
    assert saved_zero_stage(tmp_path) == 0, "no ZeRO partition files: stage 0"
    (tmp_path / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").touch()
    assert saved_zero_stage(tmp_path) == 2
    (tmp_path / "zero_pp_rank_0_mp_rank_00_model_states.pt").touch()
    assert saved_zero_stage(tmp_path) == 3
    (tmp_path / "sgmim_zero.json").write_text('{"zero_stage": 1}')
    assert saved_zero_stage(tmp_path) == 1, "the trainer's record wins"
    assert stages_compatible(1, 2) and stages_compatible(0, 0)
    assert not stages_compatible(0, 2) and not stages_compatible(2, 0) and not stages_compatible(2, 3)


def test_cache_root_follows_the_artifact_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SGMIM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    service_run = tmp_path / "artifacts" / "jobs" / "abc123"
    assert cache_root(service_run) == tmp_path / "artifacts" / "cache"
    assert cache_root(tmp_path / "my-run") == tmp_path / "xdg" / "sgmim"
    monkeypatch.setenv("SGMIM_CACHE_DIR", str(tmp_path / "explicit"))
    assert cache_root(service_run) == tmp_path / "explicit"


def test_a_run_points_the_compilers_at_the_cache_root(tmp_path):
    """What the trainer process (and the compile workers it starts) sees: inductor's and
    Triton's caches under <artifact_root>/cache; a directory the user exported is kept."""
    run_dir = tmp_path / "artifacts" / "jobs" / "abc123"
    code = ("import os, sys; from pathlib import Path; from sgmim.caches import use_cache_root; "
            "use_cache_root(Path(sys.argv[1])); "
            "print(os.environ['SGMIM_CACHE_DIR'], os.environ['TORCHINDUCTOR_CACHE_DIR'], "
            "os.environ['TRITON_CACHE_DIR'])")
    out = run_python(code, run_dir).stdout.split()
    root = tmp_path / "artifacts" / "cache"
    assert out == [str(root), str(root / "inductor"), str(root / "triton")]
    out = run_python(code, run_dir, TORCHINDUCTOR_CACHE_DIR="/mine").stdout.split()
    assert out[1] == "/mine"


def run_python(code: str, run_dir: Path, *args: str | Path, **exported: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with `run_dir` and `args` as its arguments, no cache
    variable set but `exported`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SGMIM_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    done = subprocess.run([sys.executable, "-c", code, str(run_dir), *map(str, args)],
                          env={**env, **exported},
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_inductor_uses_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setenv("SGMIM_CACHE_DIR", str(tmp_path / "cache"))
    use_cache_root(tmp_path / "run")
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert Path(cache_dir()) == tmp_path / "cache" / "inductor"


def test_kernels_compiled_after_the_trainer_imports_land_in_the_cache_root(tmp_path):
    """In the order `sgmim.train.run` takes: the trainer's modules first (timm imports
    torch._dynamo, which writes inductor's default directory into the environment), then the
    run's cache root, then a compile. The compiled graph must land under the cache root, where
    the next job of the same shape finds it, not in torch's default under /tmp."""
    run_dir = tmp_path / "artifacts" / "jobs" / "abc123"
    code = ("import os, sys; from pathlib import Path; import torch\n"
            "import sgmim.train.run, sgmim.train.trainer\n"
            "from sgmim.caches import use_cache_root\n"
            "use_cache_root(Path(sys.argv[1]))\n"
            "double = torch.compile(lambda x: x * 2 + 1, dynamic=False)\n"
            "assert double(torch.ones(3)).tolist() == [3.0, 3.0, 3.0]\n"
            "print(os.environ['TORCHINDUCTOR_CACHE_DIR'])")
    done = run_python(code, run_dir)
    inductor = tmp_path / "artifacts" / "cache" / "inductor"
    assert done.stdout.split() == [str(inductor)]
    assert list((inductor / "fxgraph").rglob("*")), "the compiled graph was cached elsewhere"


def test_a_compiled_run_says_when_it_compiles_and_how_long_the_first_step_took(tmp_path):
    """Compiling is the long silence at the start of a run (a cold Swin-B: about a minute on a
    GPU; the tiny model: minutes on a CPU): the log says it happens in the first step and where
    its cache is, then how long that step took. A real pretraining run with compile on, 4 steps
    of 2 micro-batches; Dynamo's eager backend stands in for inductor's minutes of C++ build."""
    run_dir = tmp_path / "artifacts" / "jobs" / "abc123"
    code = ("import sys; from pathlib import Path\n"
            "import sgmim.train.trainer as trainer\n"
            "from sgmim.spec import load_spec; from sgmim.train.run import run\n"
            "from sgmim.train.compile import compile_regions\n"
            "trainer.compile_regions = lambda model, mode: compile_regions(model, 'eager', mode)\n"
            "spec = load_spec(sys.argv[2], sys.argv[3:])\n"
            "sys.exit(run(spec, Path(sys.argv[1])))\n")
    overrides = ["config.deepspeed.compile=true", "config.schedule.steps=4",
                 "config.schedule.epochs=null", "config.schedule.batch_size=4",
                 "config.schedule.accumulation=2", "config.data.num_images=32"]
    run_python(code, run_dir, ROOT / "examples" / "jobs" / "pretrain-tiny.yaml", *overrides)
    log = (run_dir / "train.log").read_text()
    cache = tmp_path / "artifacts" / "cache" / "inductor"
    assert f"torch.compile works during the first step: minutes with a cold cache, seconds with " \
           f"a warm one (cache: {cache})" in log
    first = [line for line in log.splitlines() if "first step done in" in line]
    assert len(first) == 1 and first[0].endswith("s, torch.compile included"), first
    assert log.index("first step done in") < log.index("step 2/4"), "said once, after step 1"


def test_swin_attention_runs_through_fused_sdpa_with_the_same_result():
    model = tiny_model().eval()
    attentions = [m for m in model.modules() if hasattr(m, "fused_attn")]
    assert attentions and all(m.fused_attn for m in attentions)
    batch = tiny_batch()
    with torch.no_grad():
        fused = model(*batch)
        for m in attentions:
            m.fused_attn = False
        manual = model(*batch)
    torch.testing.assert_close(fused.pred_image, manual.pred_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.loss, manual.loss, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_regional_compilation_of_the_tiny_model_on_cpu():
    """Every repeated block and every piece of glue compiled on its own: 5 Swin blocks, the
    encoder's 3 patch mergings, the fusion block, the MLP extractor (its own 3 mergings inside
    it), the depth target and the two losses. The compiled model computes what the eager one
    does, every gradient included. Traced by Dynamo and AOTAutograd as on the GPU; inductor's
    C++ code generation is left out (on 2 shared cores it took minutes)."""
    from sgmim.train.compile import compile_regions

    torch.manual_seed(0)
    eager = tiny_model()
    compiled = tiny_model()
    compiled.load_state_dict(eager.state_dict())
    assert compile_regions(compiled, backend="aot_eager") == 5 + 3 + 1 + 1 + 1 + 2
    batch = tiny_batch()
    out_e, out_c = eager(*batch), compiled(*batch)
    torch.testing.assert_close(out_c.loss, out_e.loss, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out_c.loss_struct, out_e.loss_struct, atol=1e-4, rtol=1e-4)
    out_e.loss.backward()
    out_c.loss.backward()
    compiled_params = dict(compiled.named_parameters())
    for name, param in eager.named_parameters():
        torch.testing.assert_close(compiled_params[name].grad, param.grad, atol=1e-4, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")
    regions = [m for m in compiled.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(regions) == 13 and compiled._compiled_call_impl is None, "regions, not the whole model"
    merges_in_extractor = list(compiled.extractor.merges)
    assert all(m._compiled_call_impl is None for m in merges_in_extractor), "compiled once, inside it"


def test_each_block_shape_is_compiled_with_static_shapes():
    """The stages of a Swin differ in shape; with torch's automatic dynamic shapes the second
    stage's shape made the block's graph symbolic, and on an H200 (torch 2.11) inductor failed on
    the window padding's index math and fell back to eager after minutes. Every graph handed to
    the backend must have concrete shapes."""
    from sgmim.train.compile import compile_regions

    symbolic_inputs = []

    def recording_backend(graph_module, example_inputs):
        symbolic_inputs.extend(
            value for value in example_inputs
            if isinstance(value, torch.SymInt)
            or (isinstance(value, torch.Tensor)
                and any(isinstance(size, torch.SymInt) for size in value.shape)))
        graphs.append(graph_module)
        return graph_module.forward

    graphs = []
    torch.manual_seed(0)
    model = tiny_model()
    compile_regions(model, backend=recording_backend)
    with torch.no_grad():
        model(*tiny_batch())
    assert len(graphs) >= 4 + 3 + 5, "a graph per distinct block shape, merging and glue region"
    assert symbolic_inputs == []


def test_the_compile_mode_reaches_every_region(monkeypatch):
    """`deepspeed.compile_mode` (reduce-overhead: CUDA graphs) is torch.compile's mode of each
    region, shapes still static; the default stays torch's default."""
    from sgmim.train.compile import compile_regions, uses_cuda_graphs

    calls = []

    def recording_compile(fn, **kwargs):
        calls.append(kwargs)
        return fn

    monkeypatch.setattr(torch, "compile", recording_compile)
    regions = compile_regions(tiny_model(), mode="reduce-overhead")
    assert len(calls) == regions == 13
    assert all(c["mode"] == "reduce-overhead" and c["dynamic"] is False for c in calls)
    assert DeepSpeedConfig().compile_mode == "default"
    assert uses_cuda_graphs("reduce-overhead", on_gpu=True)
    assert not uses_cuda_graphs("reduce-overhead", on_gpu=False) and not uses_cuda_graphs("default", True)
    with pytest.raises(ValueError, match="compile_mode"):
        DeepSpeedConfig(compile_mode="max-autotune-everything")
