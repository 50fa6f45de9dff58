"""The phases of benchmarks/gpu_check.sh, one process each, so a phase that hangs or runs out of
time costs only itself. Every phase writes `<out>/<nn>-<phase>.json` and `<nn>-<phase>.md` (one
row of the report table) the moment it knows its numbers; `report` joins the rows.

    python benchmarks/gpu_phases.py loader --spec S.yaml --out DIR      # DataLoader alone
    python benchmarks/gpu_phases.py h2d --spec S.yaml --out DIR         # host -> device copy
    python benchmarks/gpu_phases.py step --spec S.yaml --out DIR [--variant V]  # fixed batch
    python benchmarks/gpu_phases.py train --spec S.yaml --out DIR --work W     # `sgmim train`
    python benchmarks/gpu_phases.py service --spec S.yaml --out DIR --work W   # `sgmim serve`
    python benchmarks/gpu_phases.py report --out DIR [--results RESULTS.md]
    python benchmarks/gpu_phases.py report --out FETCHED/phases --from FETCHED/gpu_check.json \
        --results benchmarks/RESULTS.md     # a run's report from the device into RESULTS.md

img/s is images per second of the whole (training) step: batch × steps / seconds, after the
warm-up. The fixed-batch step runs the project's own model, DeepSpeed config and optimiser on
one batch already on the device: the ceiling the full trainer is measured against.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PHASE_ORDER = ["loader", "h2d", "step-eager", "step-compiled", "train-simmim", "train-sgmim",
               "service", "step-model", "step-cudagraphs"]
# The fixed-batch step's variants: the spec settings each one overrides. The last two try the
# levers not on by default (whole-model compile; each compiled region replayed as a CUDA graph).
STEP_VARIANTS = {
    "eager": ["config.deepspeed.compile=false"],
    "compiled": ["config.deepspeed.compile=true"],
    "model": ["config.deepspeed.compile=true", "config.deepspeed.compile_scope=model"],
    "cudagraphs": ["config.deepspeed.compile=true", "config.deepspeed.compile_mode=reduce-overhead"],
}
TABLE_HEADER = "| phase | img/s | detail |\n|---|---|---|"


# ----------------------------------------------------------------------------------- output

def write_phase(out: Path, phase: str, images_per_s: float | None, detail: str, **numbers) -> dict:
    """The phase's JSON and its table row, written at once (a later time-out keeps them)."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"phase": phase, "images_per_s": images_per_s, "detail": detail, **numbers}
    stem = f"{PHASE_ORDER.index(phase):02d}-{phase}" if phase in PHASE_ORDER else phase
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    ips = "n/a" if images_per_s is None else f"{images_per_s:,.0f}"
    row = f"| {phase} | {ips} | {detail} |"
    (out / f"{stem}.md").write_text(row + "\n")
    print(f"gpu_check: {phase}: {ips} img/s; {detail}", flush=True)
    return record


def load_spec(path: Path):
    from sgmim.spec import load_spec as load

    return load(path)


def device():
    import torch

    return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


# ----------------------------------------------------------------------------------- loader

def build_loader(spec, pin: bool, transfer: str | None = None):
    """The trainer's dataset and DataLoader settings for this spec (one process); `transfer`
    overrides `data.transfer`."""
    from torch.utils.data import DataLoader

    from sgmim.data import build_pretrain_dataset
    from sgmim.models import SGMIM

    config = spec.config
    data = config.data if transfer is None else config.data.model_copy(update={"transfer": transfer})
    masks = SGMIM(config.model).mask_generator()
    dataset = build_pretrain_dataset(data, config.model.encoder.img_size, masks)
    workers = config.data.num_workers
    loader = DataLoader(dataset, batch_size=config.schedule.batch_size, shuffle=True,
                        num_workers=workers, drop_last=True, pin_memory=pin,
                        persistent_workers=workers > 0)
    return dataset, loader


def timed_epoch(dataset, loader, epoch: int) -> tuple[int, float, float]:
    """(images, seconds, seconds to the first batch) of one pass."""
    dataset.set_epoch(epoch)
    start = time.perf_counter()
    first, images = None, 0
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        images += batch["image"].shape[0]
    return images, time.perf_counter() - start, first or 0.0


def cmd_loader(args) -> None:
    from sgmim.caches import use_cache_root

    use_cache_root(args.work / "run")
    spec = load_spec(args.spec)
    dev = device()
    cached = len(list((Path(os.environ["SGMIM_CACHE_DIR"]) / "scenes").glob("*/*.npz")))
    dataset, loader = build_loader(spec, pin=dev.type == "cuda")
    images, first_s, _ = timed_epoch(dataset, loader, 0)
    steady = [timed_epoch(dataset, loader, e) for e in (1, 2)]
    rates = [n / s for n, s, _ in steady]
    workers = spec.config.data.num_workers
    write_phase(args.out, "loader", statistics.mean(rates),
                f"{workers} workers, pinned {dev.type == 'cuda'}, batch {spec.config.schedule.batch_size}; "
                f"epochs 2-3 {min(rates):,.0f}-{max(rates):,.0f} img/s; first epoch "
                f"{images / first_s:,.0f} img/s ({first_s:.1f} s, {cached} of {len(dataset)} "
                f"scenes on disk before)",
                epoch_rates=rates, first_epoch_s=first_s, scenes_on_disk_before=cached,
                workers=workers, dataset_size=len(dataset))


# -------------------------------------------------------------------------------------- h2d

def one_batch(spec, pin: bool, transfer: str | None = None) -> dict:
    dataset, loader = build_loader(spec, pin=False, transfer=transfer)
    dataset.set_epoch(0)
    batch = next(iter(loader))
    return {k: v.pin_memory() if pin else v for k, v in batch.items()}


def copy_rate(batch: dict, dev, repeats: int) -> float:
    """Seconds per host -> device copy of the whole batch (non-blocking from pinned memory)."""
    for _ in range(3):
        {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
    sync(dev)
    start = time.perf_counter()
    for _ in range(repeats):
        {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
    sync(dev)
    return (time.perf_counter() - start) / repeats


def cmd_h2d(args) -> None:
    from sgmim.data.transforms import normalize_pixels

    spec = load_spec(args.spec)
    dev = device()
    pin = dev.type == "cuda"
    compact = one_batch(spec, pin, transfer="compact")
    full = {**compact, "image": normalize_pixels(compact["image"]), "depth": compact["depth"].float()}
    if pin:
        full = {k: v.pin_memory() for k, v in full.items()}
    n = compact["image"].shape[0]
    sizes = {name: sum(v.numel() * v.element_size() for v in b.values())
             for name, b in (("compact", compact), ("float32", full))}
    seconds = {name: copy_rate(b, dev, args.repeats) for name, b in (("compact", compact), ("float32", full))}
    write_phase(args.out, "h2d", n / seconds["compact"],
                f"{'pinned, non-blocking' if pin else 'CPU: no copy, the figure is a tensor walk'}; "
                f"compact batch {sizes['compact'] / 2**20:.1f} MiB {n / seconds['compact']:,.0f} img/s, "
                f"float32 {sizes['float32'] / 2**20:.1f} MiB {n / seconds['float32']:,.0f} img/s",
                bytes=sizes, seconds=seconds)


# ------------------------------------------------------------------------------------- step

def cmd_step(args) -> None:
    """The trainer's own step (`Trainer.train_step`: its model, DeepSpeed engine, optimiser and
    clipping) on one batch already on the device: the ceiling the full trainer is measured
    against. On a GPU two more steps then run under torch's sync debug mode, which names every
    operation that made the host wait for the device (the trainer's step should have none)."""
    import torch

    from sgmim.caches import use_cache_root
    from sgmim.spec import load_spec as load
    from sgmim.train.distributed import init_distributed, read_env
    from sgmim.train.pretrain import PretrainTask
    from sgmim.train.trainer import Trainer

    phase = f"step-{args.variant}"
    run_dir = args.work / f"run-{phase}"
    run_dir.mkdir(parents=True, exist_ok=True)
    use_cache_root(args.work / "run")
    spec = load(args.spec, STEP_VARIANTS[args.variant])
    env = read_env()
    init_distributed(env)
    trainer = Trainer(PretrainTask(spec, env), env, run_dir)
    trainer.setup()
    batch = {k: v.to(env.device) for k, v in one_batch(spec, env.on_gpu).items()}
    n = batch["image"].shape[0]
    steps = iter(range(10 ** 9))

    def step():
        trainer.train_step(batch, next(steps))

    start = time.perf_counter()
    step()
    sync(env.device)
    first_s = time.perf_counter() - start  # with compile: tracing and code generation
    for _ in range(args.warmup):
        step()
    sync(env.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(env.device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if env.on_gpu else 0
    waits = device_waits(step, steps=2) if env.on_gpu else None
    info = json.loads((run_dir / "run_info.json").read_text())
    detail = (f"ZeRO-{trainer.zero_stage}, {info['precision']}, batch {n}, {args.steps} steps; "
              f"first step {first_s:.1f} s")
    if info["compile"]:
        detail += f" (compile: {info['compile']}, mode {info['compile_mode']})"
    loss = mean_of(trainer.meter, "loss")
    # every variant starts from the same weights and steps on the same batch: a variant whose
    # loss drifts from the others computes something else (e.g. gradients overwritten)
    detail += f"; mean loss {loss:.4f}"
    if env.on_gpu:
        detail += f"; peak {gib(peak)}; device waits in 2 steps: {sum(waits.values())}"
    write_phase(args.out, phase, n * args.steps / seconds, detail, first_step_s=first_s,
                seconds=seconds, steps=args.steps, zero_stage=trainer.zero_stage,
                peak_bytes=peak, device_waits=waits, loss=loss)


def mean_of(meter, name: str) -> float:
    """The mean of one named value over the meter's window (the phase's steps)."""
    names, values = meter.means()
    return float(values[names.index(name)])


def device_waits(step, steps: int) -> dict[str, int]:
    """Runs `steps` steps under torch.cuda's sync debug mode: {warning text + where: count}."""
    import warnings

    import torch

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits: dict[str, int] = {}
    for w in caught:
        if "synchroniz" in str(w.message):
            where = f"{str(w.message)[:80]} at {Path(w.filename).name}:{w.lineno}"
            waits[where] = waits.get(where, 0) + 1
    return waits


# ------------------------------------------------------------------------------------ train

def read_metrics(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.endswith("}"):
                records.append(json.loads(line))
    return records


def trainer_figures(run_dir: Path, warmup_steps: int) -> dict:
    """img/s of the windows after the warm-up (total images / total time), the first window's
    seconds (start-up and compile), peak memory and the stage the run chose."""
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if "images_per_s" in r]
    info = json.loads((run_dir / "run_info.json").read_text()) if (run_dir / "run_info.json").exists() else {}
    steady = [r["images_per_s"] for r in records if r["step"] > warmup_steps and r["images_per_s"] > 0]
    figures = {"windows": len(steady), "zero_stage": info.get("zero_stage"),
               "compile": info.get("compile"), "precision": info.get("precision")}
    if steady:
        figures.update(images_per_s=statistics.harmonic_mean(steady), min=min(steady), max=max(steady))
    if records:
        figures["peak_gib"] = max(r.get("max_mem_gib", 0.0) for r in records)
    log = run_dir / "train.log"
    first = re.search(r"first step done in ([\d.]+) s", log.read_text()) if log.exists() else None
    if first:  # a compiled run's first step, compile included (the trainer logs it)
        figures["first_step_s"] = float(first.group(1))
    return figures


def describe(figures: dict, wall_s: float) -> str:
    text = (f"ZeRO-{figures.get('zero_stage')}, {figures.get('precision')}, compile "
            f"{figures.get('compile') or 'off'}; {figures['windows']} windows")
    if "min" in figures:
        text += f" {figures['min']:,.0f}-{figures['max']:,.0f}"
    if figures.get("peak_gib"):
        text += f"; peak {figures['peak_gib']:.1f} GiB"
    if "first_step_s" in figures:
        text += f"; first step {figures['first_step_s']:.1f} s (compile)"
    return text + f"; {wall_s:.0f} s in all"


def cmd_train(args) -> None:
    spec = load_spec(args.spec)
    variant = "sgmim" if spec.config.model.guidance.enabled else "simmim"
    run_dir = args.work / f"run-{variant}"
    env = {**os.environ, "SGMIM_CACHE_DIR": str(args.work / "cache")}
    start = time.perf_counter()
    with (args.work / f"{variant}.log").open("w") as log:
        code = subprocess.run([sys.executable, "-m", "sgmim.cli", "train", str(args.spec),
                               "--run-dir", str(run_dir), "--nproc", "1"], cwd=ROOT, env=env,
                              stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    figures = trainer_figures(run_dir, args.warmup_steps)
    detail = describe(figures, wall) if code == 0 else f"failed (exit {code}), see {variant}.log"
    write_phase(args.out, f"train-{variant}", figures.pop("images_per_s", None), detail,
                exit_code=code, wall_s=wall, **figures)
    if code != 0:
        sys.exit(code)


# ---------------------------------------------------------------------------------- service

def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sgmim serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError("sgmim serve was not ready in time")


def cmd_service(args) -> None:
    """One job through `sgmim serve --with-worker` (embedded SQLite and broker), the same spec
    and compile cache as `sgmim train`: submit, wait, read the run's own metrics."""
    import httpx

    from sgmim.train.launch import free_port

    spec = load_spec(args.spec)
    state = args.work / "service"
    state.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGMIM_")}
    env.update(SGMIM_DATA_DIR=str(state), SGMIM_CACHE_DIR=str(args.work / "cache"))
    log = (args.work / "service.log").open("w")
    # `timeout` ends a phase with SIGTERM: leave through `finally`, which stops the server
    # (it runs in a session of its own, so nothing else would).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    proc = subprocess.Popen([sys.executable, "-m", "sgmim.cli", "serve", "--port", str(port),
                             "--with-worker"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        start = time.perf_counter()
        wait_ready(url, proc, 120)
        body = json.loads(spec.model_dump_json())
        job = httpx.post(f"{url}/api/v1/jobs", json=body, timeout=30).raise_for_status().json()
        submitted = time.perf_counter()
        status = job["status"]
        while status not in ("succeeded", "failed", "cancelled"):
            time.sleep(1)
            status = httpx.get(f"{url}/api/v1/jobs/{job['id']}", timeout=10).json()["status"]
        finished = time.perf_counter()
        run_dir = state / "artifacts" / "jobs" / job["id"]
        figures = trainer_figures(run_dir, args.warmup_steps)
        detail = (describe(figures, finished - submitted) + f" (submit to {status}); server up in "
                  f"{submitted - start:.0f} s")
        ips = figures.pop("images_per_s", None)
        write_phase(args.out, "service", ips if status == "succeeded" else None,
                    detail if status == "succeeded" else f"job {status}, see service.log and {run_dir}",
                    status=status, wall_s=finished - submitted, **figures)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


# ----------------------------------------------------------------------------------- report

def cmd_report(args) -> None:
    """The rows written so far (a phase that never finished has none), a few ratios, and the
    table in <out>/gpu_check.md; with --results also in RESULTS.md's GPU check section."""
    if args.source:  # the header fields of a report made on the device
        made = json.loads(Path(args.source).read_text())
        for key in ("gpu", "versions", "setting", "date"):
            setattr(args, key, made[key])
    if not args.date:
        raise SystemExit("report: give --date (or --from a gpu_check.json)")
    if not os.access(args.out, os.W_OK):  # fetched read-only: write the report beside RESULTS.md
        args.out = copy_folder(args.out)
    records = {}
    for path in sorted(args.out.glob("*.json")):
        record = json.loads(path.read_text())
        if "phase" in record:
            records[record["phase"]] = record
    rows = [(args.out / f"{PHASE_ORDER.index(p):02d}-{p}.md").read_text().strip()
            for p in PHASE_ORDER if p in records]
    asked = args.phases.split(",") if args.phases else PHASE_ORDER
    for p in PHASE_ORDER:
        if p not in records:
            why = "not finished (time-out or earlier failure)" if p in asked else "skipped"
            rows.append(f"| {p} | n/a | {why} |")
    ratios = ratio_lines(records)
    heading = f"{args.date}, {args.gpu} ({args.versions}); {args.setting}"
    text = f"{heading}\n\n{TABLE_HEADER}\n" + "\n".join(rows) + "\n"
    if ratios:
        text += "\n" + "\n".join(f"- {line}" for line in ratios) + "\n"
    (args.out / "gpu_check.md").write_text(text)
    (args.out / "gpu_check.json").write_text(json.dumps(
        {"date": args.date, "gpu": args.gpu, "versions": args.versions, "setting": args.setting,
         "phases": records, "ratios": ratios}, indent=2) + "\n")
    print("\n" + text)
    if args.results:
        add_report(Path(args.results), text)
        print(f"added to the 'GPU check' section of {args.results}")


def copy_folder(folder: Path) -> Path:
    import shutil
    import tempfile

    target = Path(tempfile.mkdtemp(prefix="gpu-check-report-")) / "phases"
    shutil.copytree(folder, target)
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


def ratio_lines(records: dict) -> list[str]:
    def ips(phase: str) -> float | None:
        return records.get(phase, {}).get("images_per_s")

    lines = []
    pairs = [("SG-MIM / SimMIM through `sgmim train`", "train-sgmim", "train-simmim"),
             ("`sgmim train` SG-MIM / fixed-batch step (same compile setting as the run)",
              "train-sgmim", "step-compiled" if records.get("train-sgmim", {}).get("compile")
              else "step-eager"),
             ("service / `sgmim train` (SG-MIM)", "service", "train-sgmim"),
             ("compiled / eager fixed-batch step", "step-compiled", "step-eager"),
             ("whole-model / per-region compiled step", "step-model", "step-compiled"),
             ("CUDA graphs / per-region compiled step", "step-cudagraphs", "step-compiled"),
             ("loader / `sgmim train` SG-MIM (> 1: the loader keeps up)", "loader", "train-sgmim")]
    for name, a, b in pairs:
        if ips(a) and ips(b):
            lines.append(f"{name}: {ips(a) / ips(b):.3f}")
    losses = [f"{variant} {records[f'step-{variant}']['loss']:.4f}" for variant in STEP_VARIANTS
              if records.get(f"step-{variant}", {}).get("loss") is not None]
    if len(losses) > 1:
        lines.append("mean loss of the fixed-batch step variants (same weights, same batch: "
                     "they should agree to about 1%): " + ", ".join(losses))
    return lines


GPU_SECTION = "GPU check"
GPU_INTRO = """\
`bash benchmarks/gpu_check.sh --wheels benchmarks/out/wheels` (see benchmarks/README.md): one
run, phase by phase, on one GPU with nothing installed from the network. Swin-B/192 window 6,
batch 128, bf16 autocast, synthetic RGB-D scenes, the spec's defaults (ZeRO stage auto = 0 on one
GPU, compile auto = on, per block). img/s: images per second of whole training steps after the
warm-up."""


def add_report(results: Path, report: str) -> None:
    """Add one run's report (a dated sub-block) to the GPU check section, keeping earlier runs."""
    import re

    from benchmarks import _results

    text = results.read_text() if results.exists() else ""
    match = re.search(rf"^## {GPU_SECTION}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    earlier = match.group(1).strip() if match else ""
    earlier = earlier.removeprefix(GPU_INTRO).strip()
    body = f"{GPU_INTRO}\n\n### {report.strip()}\n" + (f"\n{earlier}\n" if earlier else "")
    saved = _results.RESULTS
    _results.RESULTS = results
    try:
        _results.write_section(GPU_SECTION, body)
    finally:
        _results.RESULTS = saved


# ------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def phase(name, func, **extra):
        p = sub.add_parser(name)
        p.add_argument("--spec", type=Path, required=True)
        p.add_argument("--out", type=Path, required=True, help="the phases folder")
        p.add_argument("--work", type=Path, default=Path("/tmp/sgmim-gpu-check"))
        p.add_argument("--warmup-steps", type=int, default=0)
        for flag, kwargs in extra.items():
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)

    phase("loader", cmd_loader)
    phase("h2d", cmd_h2d, **{"--repeats": {"type": int, "default": 20}})
    phase("step", cmd_step, **{"--variant": {"choices": list(STEP_VARIANTS), "default": "eager"},
                               "--steps": {"type": int, "default": 30},
                               "--warmup": {"type": int, "default": 5}})
    phase("train", cmd_train)
    phase("service", cmd_service)

    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--results", default="")
    p.add_argument("--gpu", default="unknown device")
    p.add_argument("--versions", default="")
    p.add_argument("--setting", default="")
    p.add_argument("--date", default="")
    p.add_argument("--phases", default="", help="the phases that were run (default: all)")
    p.add_argument("--from", dest="source", help="take gpu, versions, setting and date from this "
                                                 "gpu_check.json (a report made on the device)")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    if getattr(args, "work", None):
        args.work.mkdir(parents=True, exist_ok=True)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
