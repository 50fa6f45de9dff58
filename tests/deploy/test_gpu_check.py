"""benchmarks/gpu_check.sh, its helpers benchmarks/gpu_check.py and benchmarks/gpu_phases.py, and
benchmarks/build_gpu_wheels.sh, as far as a machine without a GPU can check them: argument
parsing, dry runs, the specs, the phase records and the report, the peak-memory hook, and
(slow) every phase on the CPU with a tiny model."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks import gpu_check, gpu_phases  # noqa: E402

GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"
BUILD_WHEELS = ROOT / "benchmarks" / "build_gpu_wheels.sh"


def bash(script: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_build_wheels_dry_run(tmp_path):
    out = tmp_path / "wheels"
    done = bash(BUILD_WHEELS, "--dry-run", "--out", str(out), "--python", sys.executable)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert re.search(r"DS_BUILD_OPS=0 .*pip wheel .*--no-deps .*deepspeed==\d", text)
    for name in ("hjson", "pydantic", "pydantic-core", "pydantic-settings", "typing-inspection"):
        assert re.search(rf"--only-binary=:all: --python-version 3\.12 .* {name}==\d", text), name
    assert "pip wheel -q --no-deps -w" in text and str(ROOT) in text, "the project's own wheel"
    assert not out.exists(), "a dry run fetches nothing"


def test_build_wheels_options(tmp_path):
    done = bash(BUILD_WHEELS, "--dry-run", "--out", str(tmp_path), "--python", sys.executable,
                "--with-optional", "--no-project", "--python-version", "3.13", "deepspeed==0.19.1")
    assert done.returncode == 0, done.stderr
    assert "deepspeed==0.19.1" in done.stdout and "--python-version 3.13" in done.stdout
    assert "timm==" in done.stdout and "safetensors==" in done.stdout
    assert "pip wheel -q --no-deps -w" not in done.stdout
    assert bash(BUILD_WHEELS, "--bogus").returncode == 2
    assert bash(BUILD_WHEELS, "--help").returncode == 0


def test_gpu_check_installs_nothing_from_the_network():
    text = GPU_CHECK.read_text()
    assert "PIP_NO_INDEX=1" in text
    installs = [line for line in text.splitlines() if re.search(r"\bpip install\b", line)
                and not line.lstrip().startswith("#")]
    assert installs and all("--no-index" in line for line in installs), installs
    assert "HF_HUB_OFFLINE=1" in text


def test_gpu_check_dry_run():
    done = bash(GPU_CHECK, "--dry-run", "--python", sys.executable)
    assert done.returncode == 0, done.stderr
    phases = re.findall(r"would run phase (\S+) \(at most \d+ s\): .* benchmarks/gpu_phases\.py (\S+)",
                        done.stdout)
    assert phases == [("loader", "loader"), ("h2d", "h2d"), ("step-eager", "step"),
                      ("step-compiled", "step"), ("train-simmim", "train"), ("train-sgmim", "train"),
                      ("service", "service"), ("step-model", "step"), ("step-cudagraphs", "step")]
    assert re.search(r"phase train-simmim .* --spec \S+/simmim\.yaml", done.stdout)
    for variant in ("eager", "compiled", "model", "cudagraphs"):
        assert re.search(rf"phase step-{variant} .* step --variant {variant} ", done.stdout)
    assert "batch 128, 120 steps" in done.stdout and "compile auto" in done.stdout
    assert "budget 440 s" in done.stdout


def test_gpu_check_arguments():
    assert bash(GPU_CHECK, "--help").returncode == 0
    assert bash(GPU_CHECK, "--nope").returncode == 2
    done = bash(GPU_CHECK, "--dry-run", "--steps", "40", "--python", sys.executable)
    assert done.returncode == 2 and "no metric window" in done.stderr
    done = bash(GPU_CHECK, "--dry-run", "--phases", "loader,bogus", "--python", sys.executable)
    assert done.returncode == 2 and "unknown phase bogus" in done.stderr
    done = bash(GPU_CHECK, "--dry-run", "--phases", "step-eager,service", "--python", sys.executable)
    assert done.returncode == 0
    assert re.findall(r"would run phase (\S+)", done.stdout) == ["step-eager", "service"]


def test_cpu_smoke_runs_the_compiled_steps_only_when_named():
    """The CPU smoke test leaves the compiled steps out of its default phases (inductor's C++
    build takes minutes each), but runs them when --phases names them: that is how the compiled
    paths are rehearsed on another torch before a GPU run."""
    compiled = {"step-compiled", "step-model", "step-cudagraphs"}
    done = bash(GPU_CHECK, "--cpu-smoke", "--dry-run", "--python", sys.executable)
    assert done.returncode == 0, done.stderr
    planned = re.findall(r"would run phase (\S+)", done.stdout)
    assert "train-sgmim" in planned and not compiled & set(planned)
    done = bash(GPU_CHECK, "--cpu-smoke", "--dry-run", "--python", sys.executable,
                "--phases", "step-compiled,step-model,step-cudagraphs,train-sgmim")
    assert done.returncode == 0, done.stderr
    assert re.findall(r"would run phase (\S+)", done.stdout) == \
        ["step-compiled", "step-model", "step-cudagraphs", "train-sgmim"]
    assert re.search(r"phase step-model .* step --variant model --steps 4 ", done.stdout)


@pytest.mark.parametrize("variant", ["sgmim", "simmim"])
def test_specs_are_the_papers_setting(variant):
    from sgmim.spec import parse_spec

    spec = gpu_check.make_spec(variant, steps=300, batch=128, workers=12, num_images=4096,
                               log_every=20)
    job = parse_spec(spec)
    cfg = job.config
    assert cfg.model.guidance.enabled is (variant == "sgmim")
    assert cfg.model.encoder.timm_name == "swin_base_patch4_window7_224"
    assert (cfg.model.encoder.img_size, cfg.model.encoder.window_size) == (192, 6)
    ds = cfg.deepspeed
    assert (ds.zero_stage, ds.precision, ds.compile) == ("auto", "bf16", "auto")
    assert cfg.deepspeed.compile_scope == "blocks" and cfg.data.transfer == "auto"
    assert (cfg.schedule.batch_size, cfg.schedule.steps, cfg.schedule.epochs) == (128, 300, None)
    assert cfg.schedule.checkpoint_every is None
    assert cfg.data.source == "synthetic" and cfg.data.num_images == 4096
    per_scene = 192 * 192 * 3 + 192 * 192 * 4
    assert cfg.data.synthetic.cache_mb * 2**20 >= 4096 * per_scene, "every scene fits the cache"
    assert job.resources.gpus == 1


def test_throughput_and_memory_summary(tmp_path):
    lines = [{"step": s, "epoch": s / 32, "loss": 1.0, "images_per_s": ips, "time": float(s)}
             for s, ips in [(20, 50.0), (40, 400.0), (60, 1000.0), (80, 500.0), (100, 1000.0)]]
    lines.insert(2, {"step": 32, "epoch": 1.0, "epoch_time": 9.0, "time": 1.0})  # epoch record
    for variant in ("simmim", "sgmim"):
        run = tmp_path / variant
        (run / "gpu_check_mem").mkdir(parents=True)
        text = "\n".join(json.dumps(x) for x in lines) + "\n{\"step\": 12"  # a cut last line
        (run / "metrics.jsonl").write_text(text)
        (run / "gpu_check_mem" / "mem-1.json").write_text(json.dumps(
            {"pid": 1, "device": "Fake GPU", "max_allocated": 19 * 2**30, "max_reserved": 21 * 2**30}))
        (run / "gpu_check_nvidia_smi.csv").write_text("1000\n23000\n500\n")
    result = gpu_check.summarize({"simmim": tmp_path / "simmim", "sgmim": tmp_path / "sgmim"},
                                 warmup_steps=52)
    info = result["runs"]["sgmim"]
    assert info["windows"] == 3
    assert info["images_per_s"] == pytest.approx(3 / (1 / 1000 + 1 / 500 + 1 / 1000))  # total / total
    assert info["memory"]["max_allocated"] == 19 * 2**30
    assert info["nvidia_smi_peak_mib"] == 23000
    assert result["ratio"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no metric window"):
        gpu_check.steady_throughput(lines, warmup_steps=100)


def test_results_section_gets_one_row_per_check(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Trainer (CPU)\n\nkeep me\n")
    result = {"runs": {"simmim": {"images_per_s": 1374.2, "memory": {"max_allocated": 15 * 2**30}},
                       "sgmim": {"images_per_s": 1278.9, "memory": {}}}, "ratio": 0.93}
    row = gpu_check.table_row(result, "NVIDIA H200", "2.11.0 / 0.19.8", "ZeRO-2 bf16", "2026-11-26")
    assert row == ("| 2026-11-26 | NVIDIA H200 | 2.11.0 / 0.19.8 | ZeRO-2 bf16 | 1,374 | 1,279 | 0.930 "
                   "| 15.0 | n/a |")
    gpu_check.add_row(results, row, gpu_check.INTRO)
    gpu_check.add_row(results, row.replace("H200", "H100 80GB HBM3"), gpu_check.INTRO)
    text = results.read_text()
    assert "keep me" in text and text.count("## GPU check") == 1
    assert "| NVIDIA H200 |" in text and "| NVIDIA H100 80GB HBM3 |" in text
    assert text.count(gpu_check.TABLE_HEADER.splitlines()[0]) == 1


def test_peak_memory_hook(tmp_path):
    """The sitecustomize records a CUDA process's peaks at exit and still runs the next
    sitecustomize on sys.path."""
    hook, fake, other, report = (tmp_path / d for d in ("hook", "fake", "other", "report"))
    for d in (fake / "torch", other, report):
        d.mkdir(parents=True)
    gpu_check.main(["hook", str(hook)])
    (fake / "torch" / "__init__.py").write_text(
        "class cuda:\n"
        "    is_initialized = staticmethod(lambda: True)\n"
        "    get_device_name = staticmethod(lambda: 'Fake GPU')\n"
        "    max_memory_allocated = staticmethod(lambda: 123)\n"
        "    max_memory_reserved = staticmethod(lambda: 456)\n")
    (other / "sitecustomize.py").write_text(
        f"open({str(tmp_path / 'chained')!r}, 'w').write('yes')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (hook, fake, other))),
           "SGMIM_GPU_CHECK_REPORT_DIR": str(report)}
    subprocess.run([sys.executable, "-c", "import torch"], env=env, check=True)
    records = [json.loads(p.read_text()) for p in report.glob("mem-*.json")]
    assert records and records[0]["max_allocated"] == 123 and records[0]["device"] == "Fake GPU"
    assert (tmp_path / "chained").read_text() == "yes"
    # a process that never touched torch writes nothing
    for p in report.glob("*"):
        p.unlink()
    subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
    assert not list(report.glob("*"))


def test_phase_records_and_report_with_an_unfinished_phase(tmp_path):
    """Each phase leaves its JSON and row at once; the report joins what finished, names what
    did not (a time-out), computes the ratios, and adds a dated block to RESULTS.md."""
    phases = tmp_path / "phases"
    gpu_phases.write_phase(phases, "step-eager", 1300.0, "ZeRO-0, bfloat16")
    gpu_phases.write_phase(phases, "step-compiled", 3100.0, "ZeRO-0, first step 60 s")
    gpu_phases.write_phase(phases, "train-simmim", 3000.0, "a")
    gpu_phases.write_phase(phases, "train-sgmim", 2950.0, "b", compile="blocks")
    assert json.loads((phases / "03-step-compiled.json").read_text())["images_per_s"] == 3100.0
    assert (phases / "05-train-sgmim.md").read_text() == "| train-sgmim | 2,950 | b |\n"
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Trainer (CPU)\n\nkeep me\n")
    for day in ("2026-11-30", "2026-12-01"):
        gpu_phases.main(["report", "--out", str(phases), "--results", str(results), "--gpu", "NVIDIA H200",
                         "--versions", "2.11.0 / 0.19.8", "--setting", "Swin-B/192", "--date", day])
    report = (phases / "gpu_check.md").read_text()
    assert "| service | n/a | not finished (time-out or earlier failure) |" in report
    assert "| loader | n/a | not finished" in report
    assert "SG-MIM / SimMIM through `sgmim train`: 0.983" in report
    assert "fixed-batch step (same compile setting as the run): 0.952" in report
    assert "service / `sgmim train`" not in report, "no ratio without the service figure"
    gpu_phases.main(["report", "--out", str(phases), "--date", "2026-11-30", "--phases", "loader,h2d"])
    assert "| service | n/a | skipped |" in (phases / "gpu_check.md").read_text()
    text = results.read_text()
    assert "keep me" in text and text.count("## GPU check") == 1
    assert text.count("### 2026-11-30, NVIDIA H200") == 1 and text.count("### 2026-12-01, NVIDIA H200") == 1
    assert text.index("### 2026-12-01") < text.index("### 2026-11-30"), "newest first"
    assert text.count(gpu_phases.GPU_INTRO.splitlines()[0]) == 1


@pytest.mark.slow
def test_cpu_smoke_runs_every_phase(tmp_path):
    """Every phase but the compiled step, through the real loader, DeepSpeed, `sgmim train` and
    `sgmim serve --with-worker` (tiny model, CPU): the records, the report and the logs."""
    results, out = tmp_path / "RESULTS.md", tmp_path / "out"
    done = bash(GPU_CHECK, "--cpu-smoke", "--python", sys.executable, "--results", str(results),
                "--out", str(out), timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    finished = summary["phases"]
    assert set(finished) == {"loader", "h2d", "step-eager", "train-simmim", "train-sgmim", "service"}
    assert all(record["images_per_s"] > 0 for record in finished.values()), finished
    assert finished["train-sgmim"]["zero_stage"] == 0, "stage auto with one process"
    assert finished["service"]["status"] == "succeeded"
    assert "| step-compiled | n/a | skipped |" in (out / "gpu_check.md").read_text()
    assert any(line.startswith("SG-MIM / SimMIM") for line in summary["ratios"])
    assert "### " in results.read_text() and "CPU smoke test" in results.read_text()
    assert {"run-sgmim.log", "run-service.log", "loader.log", "run-sgmim.metrics.jsonl"} <= \
        {p.name for p in out.iterdir()}


def test_trainer_figures_of_a_run_dir(tmp_path):
    """What the train and service phases read from a run dir: steady img/s (total images over
    total time), spread, peak memory and the stage and compile setting the run chose."""
    lines = [{"step": s, "images_per_s": ips, "max_mem_gib": mem}
             for s, ips, mem in [(20, 50.0, 18.0), (40, 1000.0, 19.5), (60, 500.0, 19.0)]]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{\"st")
    (tmp_path / "run_info.json").write_text(json.dumps(
        {"zero_stage": 0, "compile": "blocks", "precision": "bfloat16"}))
    (tmp_path / "train.log").write_text(
        "2026-12-02 16:04:00 [rank 0] INFO torch.compile works during the first step: ...\n"
        "2026-12-02 16:04:42 [rank 0] INFO first step done in 41.7 s, torch.compile included\n")
    figures = gpu_phases.trainer_figures(tmp_path, warmup_steps=20)
    assert figures["images_per_s"] == pytest.approx(2 / (1 / 1000 + 1 / 500))
    assert [figures[k] for k in ("min", "max", "windows", "peak_gib")] == [500.0, 1000.0, 2, 19.5]
    assert figures["first_step_s"] == 41.7, "the compile time through the trainer, from its log"
    assert gpu_phases.describe(figures, 61.0) == ("ZeRO-0, bfloat16, compile blocks; 2 windows "
                                                  "500-1,000; peak 19.5 GiB; first step 41.7 s "
                                                  "(compile); 61 s in all")
    (tmp_path / "train.log").unlink()
    assert "first_step_s" not in gpu_phases.trainer_figures(tmp_path, warmup_steps=20)
    ips = figures.pop("images_per_s")
    record = gpu_phases.write_phase(tmp_path / "phases", "train-sgmim", ips, "d", **figures)
    assert record["zero_stage"] == 0 and record["images_per_s"] == ips


def test_step_variants_set_what_they_name_and_report_their_loss(tmp_path):
    """The fixed-batch step's variants: each sets only its compile settings; the report compares
    their speed with the per-region compiled step and lists their losses side by side (the
    same weights on the same batch: a lever that computes something else shows there)."""
    from sgmim.spec import parse_spec
    from sgmim.spec.job import apply_overrides

    base = gpu_check.make_spec("sgmim", steps=300, batch=128, workers=12, num_images=4096, log_every=20)
    settings = {}
    for variant, overrides in gpu_phases.STEP_VARIANTS.items():
        ds = parse_spec(apply_overrides(copy.deepcopy(base), overrides)).config.deepspeed
        settings[variant] = (ds.compile, ds.compile_scope, ds.compile_mode)
    assert settings == {"eager": (False, "blocks", "default"), "compiled": (True, "blocks", "default"),
                        "model": (True, "model", "default"),
                        "cudagraphs": (True, "blocks", "reduce-overhead")}

    phases = tmp_path / "phases"
    for phase, ips, loss in [("step-compiled", 2000.0, 1.2345), ("step-model", 2200.0, 1.2351),
                             ("step-cudagraphs", 2600.0, 1.2340)]:
        gpu_phases.write_phase(phases, phase, ips, "d", loss=loss)
    assert (phases / "08-step-cudagraphs.md").exists(), "numbered after the default phases"
    gpu_phases.main(["report", "--out", str(phases), "--date", "2026-12-01"])
    report = (phases / "gpu_check.md").read_text()
    assert "whole-model / per-region compiled step: 1.100" in report
    assert "CUDA graphs / per-region compiled step: 1.300" in report
    assert "compiled 1.2345, model 1.2351, cudagraphs 1.2340" in report
