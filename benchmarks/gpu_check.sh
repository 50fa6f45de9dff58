#!/usr/bin/env bash
# GPU check, phase by phase, in one run of at most --budget seconds (default 440), compile
# included: the DataLoader alone; the host->device copy; the training step on a fixed batch
# already on the GPU (eager, then compiled); the full `sgmim train` (SimMIM, then SG-MIM); one
# job through `sgmim serve --with-worker`; then, in what the budget leaves, the fixed-batch step
# with levers that are off by default (whole-model compile; CUDA graphs). Swin-B/192, batch
# 128, bf16, synthetic scenes, the spec's defaults (ZeRO stage auto, compile auto). Each phase
# prints its row and writes <out>/phases/<nn>-<phase>.{json,md} as soon as it is known; a phase
# cut by the time budget costs only itself, and the report lists it as not finished.
#
# It installs nothing from the network. Python packages the GPU machine lacks (DeepSpeed,
# hjson, pydantic, ...) come as wheels made beforehand by benchmarks/build_gpu_wheels.sh and
# are installed with `pip --no-index` into a private folder put on PYTHONPATH.
#
#   here:           bash benchmarks/build_gpu_wheels.sh             # -> benchmarks/out/wheels
#   on the GPU:     bash benchmarks/gpu_check.sh --wheels benchmarks/out/wheels --out "$OUT"
#                   (device tool: carry ["benchmarks/out/wheels"], timeout_s 560)
#   dry run here:   bash benchmarks/gpu_check.sh --dry-run
#   CPU smoke test: bash benchmarks/gpu_check.sh --cpu-smoke --out /tmp/gpu-check
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

WHEELS=""
OUT_DIR=""
RESULTS=""
STEPS=120
BATCH=128
LOG_EVERY=20
NUM_IMAGES=4096
WARMUP=""
WORKERS=""
COMPILE=auto
BUDGET=""
PHASES="loader,h2d,step-eager,step-compiled,train-simmim,train-sgmim,service,step-model,step-cudagraphs"
DRY_RUN=0
CPU_SMOKE=0
STEPS_SET=0
PHASES_SET=0
PYTHON="${PYTHON:-}"
CAP_OVERRIDES=()

usage() {
    sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF2'

Options:
  --wheels DIR      install every *.whl in DIR (pip --no-index --no-deps) before running
  --out DIR         where the phases, the report (gpu_check.md / .json) and the logs go
                    (default: a folder under benchmarks/out/)
  --results FILE    also add the report to this RESULTS.md (e.g. benchmarks/RESULTS.md)
  --budget S        seconds for all phases together (default 440)
  --phases LIST     comma-separated subset of: loader,h2d,step-eager,step-compiled,
                    train-simmim,train-sgmim,service,step-model,step-cudagraphs (default: all,
                    in that order; the last two try levers that are off by default and run
                    in what the budget leaves)
  --cap PHASE=S     at most S seconds for PHASE (repeatable; defaults: loader 70, h2d 40,
                    step-eager 70, step-compiled 150, train-* 110, service 150, step-model
                    150, step-cudagraphs 120)
  --steps N         optimiser steps of each training run (default 120)
  --batch N         batch per GPU (default 128)
  --num-images N    synthetic scenes per epoch, rendered once then cached on disk (default 4096)
  --log-every N     steps per metric window (default 20)
  --warmup-steps N  training windows ending at or before this step are left out (default 2 windows)
  --workers N       DataLoader workers (default: min(12, cores - 2))
  --compile MODE    auto (default: on for CUDA) | on | off, for the training runs and the service
  --python PATH     interpreter (default: python3, or .venv/bin/python with --cpu-smoke)
  --cpu-smoke       the same phases on the CPU with a tiny model, fp32, few steps (the
                    compiled steps are left out unless --phases names them: inductor's C++
                    build takes minutes each on a small CPU)
  --dry-run         write and validate the specs, print the plan, run nothing
  -h, --help        this text
EOF2
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --results) RESULTS="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --phases) PHASES="$2"; PHASES_SET=1; shift 2 ;;
        --cap) CAP_OVERRIDES+=("$2"); shift 2 ;;
        --steps) STEPS="$2"; STEPS_SET=1; shift 2 ;;
        --batch) BATCH="$2"; shift 2 ;;
        --num-images) NUM_IMAGES="$2"; shift 2 ;;
        --log-every) LOG_EVERY="$2"; shift 2 ;;
        --warmup-steps) WARMUP="$2"; shift 2 ;;
        --workers) WORKERS="$2"; shift 2 ;;
        --compile) COMPILE="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --cpu-smoke) CPU_SMOKE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

STEP_ARGS=(--steps 30 --warmup 5)
if [[ $CPU_SMOKE == 1 ]]; then
    STEP_ARGS=(--steps 4 --warmup 1)
    # Every phase in a few minutes on 2 cores; the numbers mean nothing.
    [[ $STEPS_SET == 0 ]] && STEPS=6
    BATCH=8; LOG_EVERY=2; NUM_IMAGES=32; WORKERS="${WORKERS:-0}"
    # The compiled steps only when --phases names them (inductor's C++ build: minutes each).
    [[ $PHASES_SET == 0 ]] && PHASES="$(echo ",$PHASES," | sed 's/,step-compiled,/,/; s/,step-model,/,/; s/,step-cudagraphs,/,/; s/^,//; s/,$//')"
    BUDGET="${BUDGET:-900}"  # 2 shared cores: a phase's imports alone can take half a minute
    # One thread per process: on a loaded small machine every parallel op otherwise waits for
    # a second core to be free (the tiny model's step went from 0.3 s to 8 s at load 16).
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    [[ -z "$PYTHON" && -x "$ROOT/.venv/bin/python" ]] && PYTHON="$ROOT/.venv/bin/python"
fi
case "$COMPILE" in auto|on|off) ;; *) echo "gpu_check: --compile is auto, on or off" >&2; exit 2 ;; esac
BUDGET="${BUDGET:-440}"
PYTHON="${PYTHON:-python3}"
CORES="$(nproc 2>/dev/null || echo 4)"
if [[ -z "$WORKERS" ]]; then
    WORKERS=$(( CORES > 14 ? 12 : (CORES > 3 ? CORES - 2 : 1) ))
fi
STEPS_PER_EPOCH=$(( NUM_IMAGES / BATCH ))
if [[ -z "$WARMUP" ]]; then
    WARMUP=$(( 2 * LOG_EVERY ))
    [[ $CPU_SMOKE == 1 ]] && WARMUP=0
fi
if (( WARMUP + LOG_EVERY > STEPS )); then
    echo "gpu_check: --steps $STEPS leaves no metric window after the warm-up ($WARMUP steps)" >&2
    exit 2
fi
for phase in ${PHASES//,/ }; do
    case "$phase" in
        loader|h2d|step-eager|step-compiled|train-simmim|train-sgmim|service|step-model|step-cudagraphs) ;;
        *) echo "gpu_check: unknown phase $phase" >&2; exit 2 ;;
    esac
done

# Nothing from the network: pip only reads the carried folder, the hub clients stay offline.
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Only used if DeepSpeed ever JIT-builds an op: its builder cannot parse "9.0a" (docs/notes.md).
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export PYTHONUNBUFFERED=1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgmim-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT  # checkpoints of Swin-B: a few GB
SITE="$WORK/site"
mkdir -p "$SITE"
OUT_DIR="${OUT_DIR:-$ROOT/benchmarks/out/gpu-check-$(date +%Y%m%d-%H%M%S)}"
PHASE_DIR="$OUT_DIR/phases"
# Compiled kernels and rendered scenes of every phase in one place: the phases after the first
# compile find a warm cache, as the next job of the same shape would.
export SGMIM_CACHE_DIR="$WORK/cache"
echo "gpu_check: work folder $WORK; results in $OUT_DIR"

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
    "$PYTHON" - "$CPU_SMOKE" "$WORK/info" <<'EOF2'
import importlib, os, sys
cpu_smoke, info = sys.argv[1] == "1", sys.argv[2]


def missing(names):
    found = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            found.append(f"{name} ({type(exc).__name__}: {exc})")
    return found


core = missing(("torch", "torchvision", "timm", "deepspeed", "pydantic", "yaml", "typer", "sgmim.cli"))
if core:
    sys.exit("gpu_check: cannot import " + "; ".join(core) + " -- carry them as wheels")
service = missing(("httpx", "uvicorn", "service.main", "worker.tasks"))
if service:
    print("gpu_check: the service phase is skipped, cannot import " + "; ".join(service))
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
    f.write(f"{name}\n{torch.__version__} / {deepspeed.__version__}\n{'no' if service else 'yes'}\n")
EOF2
    { read -r GPU_NAME; read -r VERSIONS; read -r SERVICE_OK; } <"$WORK/info"
    if [[ $SERVICE_OK == no ]]; then
        PHASES="$(echo ",$PHASES," | sed 's/,service,/,/; s/^,//; s/,$//')"
    fi
fi
SETTING="Swin-B/192 bf16, batch $BATCH, $STEPS steps per training run (first $WARMUP excluded), compile $COMPILE, $WORKERS loader workers, $NUM_IMAGES scenes"
[[ $CPU_SMOKE == 1 ]] && SETTING="tiny Swin/64 fp32, batch $BATCH, $STEPS steps, $WORKERS loader workers"

# ----------------------------------------------------------------------------------- specs
"$PYTHON" benchmarks/gpu_check.py spec --steps "$STEPS" --batch "$BATCH" --workers "$WORKERS" \
    --num-images "$NUM_IMAGES" --log-every "$LOG_EVERY" --compile "$COMPILE" \
    $([[ $CPU_SMOKE == 1 ]] && echo --cpu-smoke) --out-dir "$WORK" >/dev/null
echo "gpu_check: $GPU_NAME; $SETTING; budget ${BUDGET} s; phases $PHASES"

# The deadline is shared: each phase gets its cap or what is left, whichever is less.
declare -A CAP=([loader]=70 [h2d]=40 [step-eager]=70 [step-compiled]=150 [train-simmim]=110
                [train-sgmim]=110 [service]=150 [step-model]=150 [step-cudagraphs]=120)
if [[ $CPU_SMOKE == 1 ]]; then
    for phase in "${!CAP[@]}"; do CAP[$phase]=$(( CAP[$phase] * 3 )); done
fi
for override in "${CAP_OVERRIDES[@]}"; do
    phase="${override%%=*}" seconds="${override#*=}"
    if [[ -z "${CAP[$phase]:-}" || ! "$seconds" =~ ^[0-9]+$ ]]; then
        echo "gpu_check: --cap takes PHASE=SECONDS with a known phase, not $override" >&2
        exit 2
    fi
    CAP[$phase]=$seconds
done
phase_command() {
    local phase="$1" common=(--out "$PHASE_DIR" --work "$WORK" --warmup-steps "$WARMUP")
    case "$phase" in
        loader) echo benchmarks/gpu_phases.py loader --spec "$WORK/sgmim.yaml" "${common[@]}" ;;
        h2d) echo benchmarks/gpu_phases.py h2d --spec "$WORK/sgmim.yaml" "${common[@]}" ;;
        step-*) echo benchmarks/gpu_phases.py step --variant "${phase#step-}" "${STEP_ARGS[@]}" \
            --spec "$WORK/sgmim.yaml" "${common[@]}" ;;
        train-simmim) echo benchmarks/gpu_phases.py train --spec "$WORK/simmim.yaml" "${common[@]}" ;;
        train-sgmim) echo benchmarks/gpu_phases.py train --spec "$WORK/sgmim.yaml" "${common[@]}" ;;
        service) echo benchmarks/gpu_phases.py service --spec "$WORK/sgmim.yaml" "${common[@]}" ;;
    esac
}

if [[ $DRY_RUN == 1 ]]; then
    for phase in ${PHASES//,/ }; do
        echo "would run phase $phase (at most ${CAP[$phase]} s): $PYTHON $(phase_command "$phase")"
    done
    echo "would report: $PHASE_DIR -> $OUT_DIR/gpu_check.md${RESULTS:+ and $RESULTS}"
    exit 0
fi

mkdir -p "$PHASE_DIR"
START=$SECONDS
FAILED=0
for phase in ${PHASES//,/ }; do
    left=$(( BUDGET - (SECONDS - START) ))
    if (( left < 10 )); then
        echo "gpu_check: $phase skipped, the ${BUDGET} s budget is spent"
        continue
    fi
    limit=$(( CAP[$phase] < left ? CAP[$phase] : left ))
    echo "gpu_check: phase $phase (at most $limit s) ..."
    t0=$SECONDS
    status=0
    # shellcheck disable=SC2046
    timeout --kill-after=10 "$limit" "$PYTHON" $(phase_command "$phase") \
        >"$OUT_DIR/$phase.log" 2>&1 || status=$?
    grep '^gpu_check: ' "$OUT_DIR/$phase.log" || true
    if [[ $status != 0 ]]; then
        FAILED=1
        [[ $status == 124 || $status == 137 ]] && echo "gpu_check: $phase ran out of time ($limit s)" \
            || { echo "gpu_check: $phase failed (exit $status); the end of its log:"; tail -n 25 "$OUT_DIR/$phase.log"; }
    fi
    echo "gpu_check: $phase took $(( SECONDS - t0 )) s ($(( SECONDS - START )) s so far)"
done
for log in "$WORK"/simmim.log "$WORK"/sgmim.log "$WORK"/service.log; do
    [[ -f "$log" ]] && cp "$log" "$OUT_DIR/run-$(basename "$log")"
done
for run in "$WORK"/run-*/; do
    [[ -f "$run/metrics.jsonl" ]] && cp "$run/metrics.jsonl" "$OUT_DIR/$(basename "$run").metrics.jsonl"
done

report_args=(--out "$PHASE_DIR" --gpu "$GPU_NAME" --versions "$VERSIONS" --setting "$SETTING"
             --date "$(date +%F)" --phases "$PHASES")
[[ -n "$RESULTS" ]] && report_args+=(--results "$RESULTS")
"$PYTHON" benchmarks/gpu_phases.py report "${report_args[@]}"
cp "$PHASE_DIR/gpu_check.md" "$PHASE_DIR/gpu_check.json" "$OUT_DIR/"
echo "gpu_check: all phases in $(( SECONDS - START )) s; report in $OUT_DIR/gpu_check.md"
exit $FAILED
