#!/usr/bin/env bash
# GPU check: SG-MIM and SimMIM pretraining of Swin-B/192 through the real trainer
# (`sgmim train`: DeepSpeed ZeRO-2, bf16 via torch_autocast, batch 128, synthetic scenes) for a
# few hundred steps each; prints img/s, peak memory and the SG-MIM / SimMIM ratio, and adds a
# row to the "GPU check" section of benchmarks/RESULTS.md (GPU name and date).
#
# It installs nothing from the network. Python packages the GPU machine lacks (DeepSpeed,
# hjson, pydantic, ...) come as wheels made beforehand by benchmarks/build_gpu_wheels.sh and
# are installed with `pip --no-index` into a private folder put on PYTHONPATH.
#
#   here:           bash benchmarks/build_gpu_wheels.sh             # -> benchmarks/out/wheels
#   on the GPU:     bash benchmarks/gpu_check.sh --wheels benchmarks/out/wheels --out "$OUT"
#                   (device tool: carry ["benchmarks/out/wheels"], timeout_s 560; about 5-7 min)
#   dry run here:   bash benchmarks/gpu_check.sh --dry-run
#   CPU smoke test: bash benchmarks/gpu_check.sh --cpu-smoke --results /tmp/RESULTS.md
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WHEELS=""
OUT_DIR=""
RESULTS="$ROOT/benchmarks/RESULTS.md"
STEPS=300
BATCH=128
LOG_EVERY=20
NUM_IMAGES=4096
WARMUP=""
WORKERS=""
COMPILE=0
DRY_RUN=0
CPU_SMOKE=0
STEPS_SET=0
PYTHON="${PYTHON:-}"

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --wheels DIR      install every *.whl in DIR (pip --no-index --no-deps) before running
  --out DIR         also copy the summary, RESULTS.md and the run logs here (e.g. $OUT)
  --results FILE    RESULTS.md to add the row to (default: benchmarks/RESULTS.md; "" for none)
  --steps N         optimiser steps per run (default 300)
  --batch N         batch per GPU (default 128)
  --num-images N    synthetic scenes per epoch, rendered once then cached (default 4096)
  --log-every N     steps per metric window (default 20)
  --warmup-steps N  windows ending at or before this step are left out
                    (default: one epoch + one window)
  --workers N       DataLoader workers (default: min(12, cores - 2))
  --compile         also torch.compile the model (deepspeed.compile: true)
  --python PATH     interpreter (default: python3, or .venv/bin/python with --cpu-smoke)
  --cpu-smoke       tiny model, fp32, few steps, on the CPU: checks the pipeline, not the GPU
  --dry-run         write and validate the specs, print the plan, run nothing
  -h, --help        this text
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --results) RESULTS="$2"; shift 2 ;;
        --steps) STEPS="$2"; STEPS_SET=1; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --num-images) NUM_IMAGES="$2"; shift 2 ;;
        --log-every) LOG_EVERY="$2"; shift 2 ;;
        --warmup-steps) WARMUP="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --compile) COMPILE=1; shift ;;
        --python) PYTHON="$2"; shift 2 ;;
        --cpu-smoke) CPU_SMOKE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ $CPU_SMOKE == 1 ]]; then
    # The whole pipeline in under a minute on 2 cores; numbers mean nothing.
    [[ $STEPS_SET == 0 ]] && STEPS=6
    BATCH=8; LOG_EVERY=2; NUM_IMAGES=32; WORKERS="${WORKERS:-0}"
    [[ -z "$PYTHON" && -x "$ROOT/.venv/bin/python" ]] && PYTHON="$ROOT/.venv/bin/python"
fi
PYTHON="${PYTHON:-python3}"
CORES="$(nproc 2>/dev/null || echo 4)"
if [[ -z "$WORKERS" ]]; then
    WORKERS=$(( CORES > 14 ? 12 : (CORES > 3 ? CORES - 2 : 1) ))
fi
STEPS_PER_EPOCH=$(( NUM_IMAGES / BATCH ))
if [[ -z "$WARMUP" ]]; then
    WARMUP=$(( STEPS_PER_EPOCH + LOG_EVERY ))
    [[ $CPU_SMOKE == 1 ]] && WARMUP=0
fi
if (( WARMUP + LOG_EVERY > STEPS )); then
    echo "gpu_check: --steps $STEPS leaves no metric window after the warm-up ($WARMUP steps)" >&2
    exit 2
fi

# Nothing from the network: pip only reads the carried folder, the hub clients stay offline.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Only used if DeepSpeed ever JIT-builds an op: its builder cannot parse "9.0a" (docs/notes.md).
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export PYTHONUNBUFFERED=1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgmim-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT  # checkpoints of Swin-B: a few GB
SITE="$WORK/site"
HOOK="$WORK/hook"
mkdir -p "$SITE" "$HOOK"
echo "gpu_check: work folder $WORK"

# ---------------------------------------------------------------------------- carried wheels
if [[ -n "$WHEELS" ]]; then
    shopt -s nullglob
    wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    # The project itself runs from this source tree, not from its wheel.
    mapfile -t wheels < <(printf '%s\n' "${wheels[@]}" | grep -v '/sgmim-[^/]*\.whl$' || true)
    if [[ ${#wheels[@]} -eq 0 ]]; then
        echo "gpu_check: no wheels in $WHEELS (make them with benchmarks/build_gpu_wheels.sh)" >&2
        exit 2
    fi
    echo "gpu_check: installing ${#wheels[@]} carried wheels (--no-index) into $SITE"
    if [[ $DRY_RUN == 0 ]]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "${wheels[@]}"
    fi
fi
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ------------------------------------------------------------------------------- preflight
GPU_NAME="(dry run)"
VERSIONS="?"
if [[ $DRY_RUN == 0 ]]; then
    "$PYTHON" - "$CPU_SMOKE" "$WORK/info" <<'EOF'
import importlib, os, sys
cpu_smoke, info = sys.argv[1] == "1", sys.argv[2]
missing = []
for name in ("torch", "torchvision", "timm", "deepspeed", "pydantic", "yaml", "typer", "sgmim.cli"):
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001
        missing.append(f"{name} ({type(exc).__name__}: {exc})")
if missing:
    sys.exit("gpu_check: cannot import " + "; ".join(missing) + " -- carry them as wheels")
import deepspeed, timm, torch
print(f"gpu_check: python {sys.version.split()[0]}, torch {torch.__version__}, "
      f"deepspeed {deepspeed.__version__}, timm {timm.__version__}")
if cpu_smoke:
    name = f"CPU smoke test ({os.cpu_count()} cores)"
elif torch.cuda.is_available():
    name = torch.cuda.get_device_name(0)
else:
    sys.exit("gpu_check: torch sees no CUDA device (use --cpu-smoke to check the pipeline on a CPU)")
with open(info, "w") as f:
    f.write(f"{name}\n{torch.__version__} / {deepspeed.__version__}\n")
EOF
    { read -r GPU_NAME; read -r VERSIONS; } <"$WORK/info"
fi
SETTING="ZeRO-2 bf16, batch $BATCH, $STEPS steps (first $WARMUP excluded)"
[[ $COMPILE == 1 ]] && SETTING="$SETTING, compiled"
[[ $CPU_SMOKE == 1 ]] && SETTING="tiny Swin/64 fp32, batch $BATCH, $STEPS steps"

# ----------------------------------------------------------------------------------- specs
spec_args=(--steps "$STEPS" --batch "$BATCH" --workers "$WORKERS" --num-images "$NUM_IMAGES"
           --log-every "$LOG_EVERY")
[[ $COMPILE == 1 ]] && spec_args+=(--compile)
[[ $CPU_SMOKE == 1 ]] && spec_args+=(--cpu-smoke)
"$PYTHON" benchmarks/gpu_check.py spec "${spec_args[@]}" --out-dir "$WORK"
"$PYTHON" benchmarks/gpu_check.py hook "$HOOK"

echo "gpu_check: $GPU_NAME; $SETTING; $WORKERS loader workers; $NUM_IMAGES scenes ($STEPS_PER_EPOCH steps/epoch)"
if [[ $DRY_RUN == 1 ]]; then
    for variant in simmim sgmim; do
        echo "would run: $PYTHON -m sgmim.cli train $WORK/$variant.yaml --run-dir $WORK/run-$variant --nproc 1"
    done
    echo "would summarize: img/s of the windows after step $WARMUP, peak memory, ratio -> ${RESULTS:-(no RESULTS.md)}"
    exit 0
fi

# ------------------------------------------------------------------------------------ runs
run_one() {
    local variant="$1" run="$WORK/run-$1" sampler=""
    mkdir -p "$run/gpu_check_mem"
    if [[ $CPU_SMOKE == 0 ]] && command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 \
            >"$run/gpu_check_nvidia_smi.csv" 2>/dev/null &
        sampler=$!
    fi
    local start=$SECONDS status=0
    echo "gpu_check: training $variant ..."
    SGMIM_GPU_CHECK_REPORT_DIR="$run/gpu_check_mem" PYTHONPATH="$HOOK:$PYTHONPATH" \
        "$PYTHON" -m sgmim.cli train "$WORK/$variant.yaml" --run-dir "$run" --nproc 1 \
        >"$WORK/$variant.stdout" 2>&1 || status=$?
    [[ -n "$sampler" ]] && { kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; }
    echo "gpu_check: $variant finished with status $status in $(( SECONDS - start )) s"
    if [[ $status != 0 ]]; then
        tail -n 40 "$WORK/$variant.stdout" >&2
        [[ -n "$OUT_DIR" ]] && cp "$WORK/$variant.stdout" "$OUT_DIR/$variant.log" 2>/dev/null
        return "$status"
    fi
}

[[ -n "$OUT_DIR" ]] && mkdir -p "$OUT_DIR"
run_one simmim
run_one sgmim

summary_args=(--run "simmim=$WORK/run-simmim" --run "sgmim=$WORK/run-sgmim" --warmup-steps "$WARMUP"
              --gpu "$GPU_NAME" --versions "$VERSIONS" --setting "$SETTING" --date "$(date +%F)"
              --json "$WORK/gpu_check.json")
[[ -n "$RESULTS" ]] && summary_args+=(--results "$RESULTS")
"$PYTHON" benchmarks/gpu_check.py summarize "${summary_args[@]}"

if [[ -n "$OUT_DIR" ]]; then
    cp "$WORK/gpu_check.json" "$OUT_DIR/"
    [[ -n "$RESULTS" && -f "$RESULTS" ]] && cp "$RESULTS" "$OUT_DIR/RESULTS.md"
    for variant in simmim sgmim; do
        cp "$WORK/$variant.stdout" "$OUT_DIR/$variant.log"
        cp "$WORK/run-$variant/metrics.jsonl" "$OUT_DIR/$variant.metrics.jsonl"
    done
    echo "gpu_check: summary, RESULTS.md, logs and metrics copied to $OUT_DIR"
fi
