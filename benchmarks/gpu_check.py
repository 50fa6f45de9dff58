"""Helper of benchmarks/gpu_check.sh: the job specs (the phases are benchmarks/gpu_phases.py);
also the peak-memory hook and the summary of the former two-run check.

    python benchmarks/gpu_check.py spec --steps 300 --batch 128 --out-dir DIR  # DIR/{simmim,sgmim}.yaml
    python benchmarks/gpu_check.py hook DIR          # writes DIR/sitecustomize.py
    python benchmarks/gpu_check.py summarize --run simmim=RUN_DIR --run sgmim=RUN_DIR ...

The specs are the paper's Swin-B/192 pretraining spec (examples/jobs/pretrain-swin-base-100ep.yaml)
on synthetic RGB-D scenes, DeepSpeed (stage auto) with bf16 autocast, run for a fixed number of steps;
SimMIM is the same spec with `guidance.enabled: false`.

Peak memory: the trainer does not log it, so the hook (a `sitecustomize` put first on
PYTHONPATH for the training run only) writes `torch.cuda.max_memory_allocated()` and
`max_memory_reserved()` of every process that used CUDA to `<report dir>/mem-<pid>.json` at exit.
gpu_check.sh also samples `nvidia-smi` (the whole GPU's used memory, allocator cache and CUDA
context included).

Images/s: the trainer's own `images_per_s` of each metrics.jsonl window (log_every steps), over
the windows that end after `--warmup-steps` (the first epoch renders and caches the synthetic
scenes, and the first steps pay for cuDNN/cuBLAS autotuning). Their harmonic mean is total
images over total time, since every window holds the same number of steps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE_SPEC = ROOT / "examples" / "jobs" / "pretrain-swin-base-100ep.yaml"
SECTION = "GPU check"
TABLE_HEADER = (
    "| date | GPU | torch / DeepSpeed | setting | SimMIM img/s | SG-MIM img/s | SG-MIM / SimMIM "
    "| SimMIM peak GiB | SG-MIM peak GiB |\n"
    "|---|---|---|---|---|---|---|---|---|"
)

HOOK = '''\
"""Written by benchmarks/gpu_check.py for one training run: at exit, record this process's peak
CUDA memory in $SGMIM_GPU_CHECK_REPORT_DIR/mem-<pid>.json, then hand over to any other
sitecustomize further down sys.path."""
import atexit
import importlib.machinery
import importlib.util
import json
import os
import sys


def _sgmim_gpu_check_report():
    out = os.environ.get("SGMIM_GPU_CHECK_REPORT_DIR")
    torch = sys.modules.get("torch")
    if not out or torch is None:
        return
    try:
        if not torch.cuda.is_initialized():
            return
        record = {"pid": os.getpid(), "rank": os.environ.get("RANK"),
                  "device": torch.cuda.get_device_name(),
                  "max_allocated": torch.cuda.max_memory_allocated(),
                  "max_reserved": torch.cuda.max_memory_reserved()}
    except Exception as exc:  # a report must never fail the run
        record = {"pid": os.getpid(), "error": repr(exc)}
    with open(os.path.join(out, f"mem-{os.getpid()}.json"), "w") as f:
        json.dump(record, f)


atexit.register(_sgmim_gpu_check_report)

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in sys.path:
    if os.path.abspath(_entry or ".") == _here:
        continue
    _spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [_entry or "."])
    if _spec is not None and _spec.loader is not None:
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        break
'''


# ----------------------------------------------------------------------------------------- spec

def make_spec(variant: str, steps: int, batch: int, workers: int, num_images: int, log_every: int,
              compile_model: bool | str = "auto", cpu_smoke: bool = False) -> dict:
    """The benchmark spec (a decoded job spec, validated by the caller or by `sgmim train`)."""
    if variant not in ("sgmim", "simmim"):
        raise ValueError(f"variant must be sgmim or simmim, not {variant!r}")
    spec = yaml.safe_load(BASE_SPEC.read_text())
    spec["name"] = f"gpu-check-{variant}"
    config = spec["config"]
    config["model"]["guidance"]["enabled"] = variant == "sgmim"
    if cpu_smoke:  # the pipeline on a CPU: the tiny model of examples/jobs/pretrain-tiny.yaml
        config["model"]["encoder"] = {"timm_name": "swin_tiny_patch4_window7_224", "img_size": 64,
                                      "window_size": 4, "embed_dim": 32, "depths": [1, 1, 2, 1],
                                      "num_heads": [1, 2, 4, 8], "drop_path_rate": 0.0}
        config["model"]["mask"]["mask_patch_size"] = 16
        config["model"]["guidance"]["fusion_heads"] = 4
    size = config["model"]["encoder"]["img_size"]
    per_scene = size * size * (3 + 4)  # uint8 RGB + float32 depth in the shared cache
    config["data"] = {
        "source": "synthetic",
        "num_images": num_images,
        "num_workers": workers,
        "augment": config["data"].get("augment", {}),
        # every scene rendered once (first epoch), then served from shared memory
        "synthetic": {"cache_mb": int(num_images * per_scene / 2**20) + 64},
    }
    config["schedule"] = {"batch_size": batch, "steps": steps, "log_every": log_every,
                          "checkpoint_every": None, "keep_checkpoints": 1}
    # the spec's defaults: ZeRO stage auto (0 on one GPU), compile auto (on for CUDA), per block
    config["deepspeed"] = {"zero_stage": "auto", "precision": "fp32" if cpu_smoke else "bf16",
                           "compile": compile_model}
    spec["resources"] = {"gpus": 1, "nodes": 1}
    spec["max_restarts"] = 0
    return spec


def cmd_spec(args: argparse.Namespace) -> int:
    """Writes <out-dir>/<variant>.yaml for each variant, validated by the job-spec schema."""
    from sgmim.spec import SpecError, parse_spec

    for variant in args.variants.split(","):
        compile_model = {"auto": "auto", "on": True, "off": False}[args.compile]
        spec = make_spec(variant, args.steps, args.batch, args.workers, args.num_images,
                         args.log_every, compile_model, args.cpu_smoke)
        try:
            parse_spec(spec)
        except SpecError as exc:
            print(f"error: the generated {variant} spec does not validate: {exc}", file=sys.stderr)
            return 2
        out = Path(args.out_dir) / f"{variant}.yaml"
        out.write_text(yaml.safe_dump(spec, sort_keys=False))
        print(f"spec {variant}: {out}")
    return 0


def cmd_hook(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sitecustomize.py").write_text(HOOK)
    return 0


# ------------------------------------------------------------------------------------ summary

def read_metrics(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            with contextlib.suppress(json.JSONDecodeError):  # a last line cut short
                records.append(json.loads(line))
    return records


def steady_throughput(records: list[dict], warmup_steps: int) -> dict:
    """img/s over the metric windows that end after warmup_steps."""
    windows = [(r["step"], r["images_per_s"]) for r in records if "images_per_s" in r]
    steady = [v for step, v in windows if step > warmup_steps and v > 0]
    if not steady:
        raise ValueError(f"no metric window after step {warmup_steps} "
                         f"({len(windows)} windows, last step {windows[-1][0] if windows else None})")
    return {"images_per_s": statistics.harmonic_mean(steady), "median": statistics.median(steady),
            "min": min(steady), "max": max(steady), "windows": len(steady),
            "last_step": windows[-1][0]}


def peak_memory(report_dir: Path) -> dict:
    """Largest per-process peaks recorded by the hook (bytes), or {} when none was recorded."""
    records = [json.loads(p.read_text()) for p in sorted(report_dir.glob("mem-*.json"))]
    records = [r for r in records if "max_allocated" in r]
    if not records:
        return {}
    return {"max_allocated": max(r["max_allocated"] for r in records),
            "max_reserved": max(r["max_reserved"] for r in records),
            "device": records[0]["device"], "processes": len(records)}


def nvidia_smi_peak(path: Path) -> int | None:
    """Largest memory.used sample (MiB) of an `nvidia-smi --query-gpu=memory.used` log."""
    if not path.exists():
        return None
    values = [int(m.group()) for line in path.read_text().splitlines()
              if (m := re.search(r"\d+", line))]
    return max(values) if values else None


def gib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**30:.1f}"


def summarize(runs: dict[str, Path], warmup_steps: int) -> dict:
    result: dict = {"warmup_steps": warmup_steps, "runs": {}}
    for variant, run_dir in runs.items():
        info = steady_throughput(read_metrics(run_dir / "metrics.jsonl"), warmup_steps)
        info["memory"] = peak_memory(run_dir / "gpu_check_mem")
        info["nvidia_smi_peak_mib"] = nvidia_smi_peak(run_dir / "gpu_check_nvidia_smi.csv")
        result["runs"][variant] = info
    if {"sgmim", "simmim"} <= result["runs"].keys():
        result["ratio"] = result["runs"]["sgmim"]["images_per_s"] / result["runs"]["simmim"]["images_per_s"]
    return result


def table_row(result: dict, gpu: str, versions: str, setting: str, day: str) -> str:
    runs = result["runs"]

    def ips(v: str) -> str:
        return f"{runs[v]['images_per_s']:,.0f}" if v in runs else "n/a"

    def mem(v: str) -> str:
        return gib(runs.get(v, {}).get("memory", {}).get("max_allocated"))

    ratio = f"{result['ratio']:.3f}" if "ratio" in result else "n/a"
    return (f"| {day} | {gpu} | {versions} | {setting} | {ips('simmim')} | {ips('sgmim')} | {ratio} "
            f"| {mem('simmim')} | {mem('sgmim')} |")


def add_row(results_path: Path, row: str, intro: str) -> None:
    """Append `row` to the table of the `## GPU check` section (created when missing)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import _results

    text = results_path.read_text() if results_path.exists() else ""
    match = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    rows = [line for line in (match.group(1).splitlines() if match else [])
            if line.startswith("| 2")]  # data rows start with the date
    body = f"{intro.strip()}\n\n{TABLE_HEADER}\n" + "\n".join([*rows, row])
    saved = _results.RESULTS
    _results.RESULTS = results_path
    try:
        _results.write_section(SECTION, body)
    finally:
        _results.RESULTS = saved


INTRO = """\
`bash benchmarks/gpu_check.sh` on one GPU, nothing installed from the network: the real trainer
(`sgmim train`, DeepSpeed ZeRO-2, bf16 through `torch_autocast`, torch fused AdamW as client
optimiser), Swin-B/192 window 6, batch 128, synthetic RGB-D scenes rendered once and cached.
img/s: the trainer's own metric windows after the warm-up steps (first epoch included), as total
images over total time. Peak GiB: `torch.cuda.max_memory_allocated()` of the training process."""


def cmd_summarize(args: argparse.Namespace) -> int:
    runs = {}
    for item in args.run:
        variant, _, path = item.partition("=")
        runs[variant] = Path(path)
    result = summarize(runs, args.warmup_steps)
    result.update(gpu=args.gpu, versions=args.versions, setting=args.setting, date=args.date)
    print()
    print(f"GPU check, {args.gpu}, {args.date} ({args.versions}; {args.setting})")
    print(f"{'':8} {'img/s':>9} {'median':>9} {'windows':>8} {'peak alloc GiB':>15} "
          f"{'peak reserved GiB':>18} {'nvidia-smi peak GiB':>20}")
    for variant, info in result["runs"].items():
        mem = info["memory"]
        smi = info["nvidia_smi_peak_mib"]
        print(f"{variant:8} {info['images_per_s']:9.1f} {info['median']:9.1f} {info['windows']:8d} "
              f"{gib(mem.get('max_allocated')):>15} {gib(mem.get('max_reserved')):>18} "
              f"{gib(None if smi is None else smi * 2**20):>20}")
    if "ratio" in result:
        print(f"SG-MIM / SimMIM throughput: {result['ratio']:.3f}")
    row = table_row(result, args.gpu, args.versions, args.setting, args.date)
    print()
    print(TABLE_HEADER)
    print(row)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.results:
        add_row(Path(args.results), row, INTRO)
        print(f"\nadded to the '{SECTION}' section of {args.results}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("spec", help="write the benchmark job specs")
    p.add_argument("--variants", default="simmim,sgmim", help="comma-separated: simmim, sgmim")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    p.add_argument("--num-images", type=int, default=4096)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="deepspeed.compile (default auto: on for CUDA)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny model, fp32: the pipeline on a CPU")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_spec)

    p = sub.add_parser("hook", help="write the peak-memory sitecustomize into DIR")
    p.add_argument("dir")
    p.set_defaults(func=cmd_hook)

    p = sub.add_parser("summarize", help="img/s, peak memory and the ratio of finished runs")
    p.add_argument("--run", action="append", required=True, metavar="VARIANT=RUN_DIR")
    p.add_argument("--warmup-steps", type=int, required=True)
    p.add_argument("--gpu", default="unknown GPU")
    p.add_argument("--versions", default="")
    p.add_argument("--setting", default="")
    p.add_argument("--date", required=True)
    p.add_argument("--json", help="write the numbers here")
    p.add_argument("--results", help="add a row to the GPU check section of this RESULTS.md")
    p.set_defaults(func=cmd_summarize)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
