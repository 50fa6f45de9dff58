#!/usr/bin/env bash
# Make the wheels that benchmarks/gpu_check.sh installs on a GPU machine without network.
#
# That machine (docs/notes.md "GPU pitfalls") has Python 3.12 with torch, timm, numpy,
# ninja, py-cpuinfo, msgpack, safetensors, ... but not DeepSpeed, hjson or pydantic. This
# script fetches those as Python 3.12 manylinux x86-64 wheels (`pip download --only-binary`),
# builds DeepSpeed as a pure-Python wheel (DS_BUILD_OPS=0: no CUDA op is compiled ahead; the
# trainer needs none), and builds the project's own wheel. Versions default to the ones
# installed in .venv, i.e. the ones the test suite runs with.
#
#     bash benchmarks/build_gpu_wheels.sh                  # -> benchmarks/out/wheels (git-ignored)
#     bash benchmarks/build_gpu_wheels.sh --dry-run        # print the commands only
#     bash benchmarks/build_gpu_wheels.sh --with-optional  # also what that machine already has
#     bash benchmarks/build_gpu_wheels.sh deepspeed==0.19.8 pydantic==2.14.4   # other versions
#
# Then, with the device tool: carry ["benchmarks/out/wheels"] and run
#     bash benchmarks/gpu_check.sh --wheels benchmarks/out/wheels --out "$OUT"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

OUT="benchmarks/out/wheels"
PYVER="3.12"
DRY_RUN=0
WITH_OPTIONAL=0
WITH_PROJECT=1
WITH_SERVICE=1
PYTHON="${PYTHON:-}"
OVERRIDES=()

# What the trainer imports that the GPU machine lacks (or may hold in a version too old for
# pydantic 2.x / typer 0.29). Pure-Python unless marked.
REQUIRED=(deepspeed hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions
          pydantic-settings python-dotenv typer annotated-doc)
# What `sgmim serve --with-worker` adds (the service phase of gpu_check.sh): FastAPI, uvicorn,
# SQLAlchemy + Alembic on SQLite, Celery on the filesystem broker, httpx; FastAPI imports
# opentelemetry-api at start-up. --no-service: not these.
SERVICE=(fastapi starlette uvicorn h11 anyio idna sqlalchemy alembic mako markupsafe celery kombu
         billiard vine amqp click click-didyoumean click-plugins click-repl prompt-toolkit wcwidth
         python-dateutil six tzlocal httpx httpcore certifi prometheus-client rich markdown-it-py
         mdurl pygments opentelemetry-api shellingham jinja2 plotly narwhals fastapi-offline)
# Already on that machine; for another GPU machine that lacks them.
OPTIONAL=(ninja py-cpuinfo msgpack safetensors timm einops psutil)
# Limit of what one device call may carry, with the working tree (64 MiB together).
MAX_MB=40

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --out DIR            where the wheels go (default benchmarks/out/wheels; emptied first)
  --python-version V   target interpreter of the GPU machine (default 3.12)
  --with-optional      also: ninja py-cpuinfo msgpack safetensors timm einops psutil
  --no-project         do not build the sgmim wheel
  --no-service         leave out the service's packages (gpu_check.sh then skips its service phase)
  --python PATH        interpreter that runs pip here (default .venv/bin/python)
  --dry-run            print the commands, fetch and build nothing
  NAME==VERSION        use this version instead of the one installed in .venv
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --python-version) PYVER="$2"; shift 2 ;;
        --with-optional) WITH_OPTIONAL=1; shift ;;
        --no-project) WITH_PROJECT=0; shift ;;
        --no-service) WITH_SERVICE=0; shift ;;
        --python) PYTHON="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *==*) OVERRIDES+=("$1"); shift ;;
        *) echo "build_gpu_wheels: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

names=("${REQUIRED[@]}")
[[ $WITH_SERVICE == 1 ]] && names+=("${SERVICE[@]}")
[[ $WITH_OPTIONAL == 1 ]] && names+=("${OPTIONAL[@]}")

# NAME==VERSION for each name: an override, else the version installed here.
mapfile -t pins < <("$PYTHON" - "${names[@]}" -- "${OVERRIDES[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

args = sys.argv[1:]
cut = args.index("--")
names, overrides = args[:cut], args[cut + 1:]
norm = lambda s: s.lower().replace("_", "-")  # noqa: E731
chosen = {norm(n): v for n, _, v in (o.partition("==") for o in overrides)}
for name in names:
    ver = chosen.pop(norm(name), None)
    if ver is None:
        try:
            ver = version(name)
        except PackageNotFoundError:
            sys.exit(f"build_gpu_wheels: {name} is not installed here; give NAME==VERSION")
    print(f"{name}=={ver}")
for name, ver in chosen.items():  # overrides of packages outside the default set
    print(f"{name}=={ver}")
EOF
)

platforms=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 \
         manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
    platforms+=(--platform "$p")
done

run() {
    echo "+ $*"
    [[ $DRY_RUN == 1 ]] || "$@"
}

if [[ $DRY_RUN == 0 ]]; then
    rm -rf "$OUT"
    mkdir -p "$OUT"
fi
for pin in "${pins[@]}"; do
    if [[ "$pin" == deepspeed==* ]]; then
        # Only a source distribution on PyPI; DS_BUILD_OPS=0 builds no op ahead of time.
        run env DS_BUILD_OPS=0 "$PYTHON" -m pip wheel -q --no-deps --no-binary deepspeed -w "$OUT" "$pin"
    else
        run "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
            --implementation cp "${platforms[@]}" -d "$OUT" "$pin"
    fi
done
if [[ $WITH_PROJECT == 1 ]]; then
    had_build=0
    [[ -e "$ROOT/build" ]] && had_build=1
    run "$PYTHON" -m pip wheel -q --no-deps -w "$OUT" "$ROOT"
    # setuptools builds in the source tree: leave no build/ that was not there before
    [[ $DRY_RUN == 0 && $had_build == 0 ]] && rm -rf "$ROOT/build"
fi

if [[ $DRY_RUN == 1 ]]; then
    echo "dry run: nothing fetched or built (${#pins[@]} packages$([[ $WITH_PROJECT == 1 ]] && echo ' + sgmim'))"
    exit 0
fi

# One version of each distribution: two would stop `pip install` on the GPU machine.
dupes="$(ls "$OUT" | sed -E 's/^([^-]+)-.*/\1/' | tr 'A-Z' 'a-z' | sort | uniq -d)"
if [[ -n "$dupes" ]]; then
    echo "build_gpu_wheels: more than one wheel of: $dupes" >&2
    exit 1
fi
size_mb=$(( $(du -sk "$OUT" | cut -f1) / 1024 ))
ls -1 "$OUT"
echo "build_gpu_wheels: $(ls "$OUT" | wc -l) wheels, ${size_mb} MiB in $OUT"
if (( size_mb > MAX_MB )); then
    echo "build_gpu_wheels: more than $MAX_MB MiB: a device call carries 64 MiB with the working tree" >&2
    exit 1
fi
