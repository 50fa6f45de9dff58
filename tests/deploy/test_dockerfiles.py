"""Invariants of deploy/api.Dockerfile and deploy/worker.Dockerfile, read as text (no engine).

One source of truth for Python dependencies: the images install the project from
pyproject.toml (`pip install .`); the only package a Dockerfile may name is pyproject.toml's
pinned torch/torchvision pair, installed first with exactly those versions.
"""

from __future__ import annotations

import re
import shlex
from fnmatch import fnmatch

import pytest

from tests.deploy.helpers import DOCKERFILES, PYPROJECT, ROOT, dependency_pins, parse_dockerfile

PINNED_PAIR = ("torch", "torchvision")
UID = "10001"


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request):
    return request.param, parse_dockerfile(DOCKERFILES[request.param])


def _external_images(stages):
    names = {s.name for s in stages if s.name}
    return [s.image for s in stages if s.image not in names]


def test_from_images_pinned(dockerfile):
    name, stages = dockerfile
    for image in _external_images(stages):
        assert "$" not in image, f"{name}: FROM {image}: no build-arg in FROM (pin it in the file)"
        ref, _, digest = image.partition("@")
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else None
        assert tag or digest, f"{name}: FROM {image} is not pinned"
        if tag:
            assert tag != "latest" and re.match(r"^v?\d+\.\d+\.\d+", tag), \
                f"{name}: FROM {image}: pin a full version (x.y.z), not {tag!r}"


def test_multi_stage(dockerfile):
    name, stages = dockerfile
    assert len(stages) >= 2, f"{name}: a builder stage and a runtime stage"
    final = stages[-1]
    copies = final.args("COPY")
    assert any(c.startswith("--from=") and "/opt/venv" in c for c in copies), \
        f"{name}: the runtime stage copies the venv built in the builder"
    assert not any(re.search(r"\bpip\b.*\binstall\b", run) for run in final.args("RUN")), \
        f"{name}: nothing is pip-installed in the runtime stage"


def test_runs_as_non_root(dockerfile):
    name, stages = dockerfile
    final = stages[-1]
    users = final.args("USER")
    assert users, f"{name}: the runtime stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as {users[-1]}"
    runs = " ".join(final.args("RUN"))
    assert re.search(rf"useradd\b.*--uid {UID}\b", runs), \
        f"{name}: user with uid {UID} (the same in every image: they share the artifact volume)"
    # the user's folders exist and are theirs, so named volumes mounted there start writable
    assert re.search(r"install -d -o sgmim -g sgmim .*/var/lib/sgmim/artifacts", runs)


def _pip_installs(stages):
    """The argument lists of every `pip install` in RUN instructions (any stage)."""
    found = []
    for stage in stages:
        for run in stage.args("RUN"):
            for part in re.split(r"&&|;|\|\|", run):
                argv = shlex.split(part)
                for i, word in enumerate(argv):
                    if word.endswith("pip") and argv[i + 1:i + 2] == ["install"]:
                        found.append(argv[i + 2:])
                assert not (argv[:2] == ["uv", "pip"] or "conda" in argv[:1] or "pipx" in argv[:1]), \
                    f"install other than pip: {part}"
    return found


def test_python_dependencies_come_from_pyproject(dockerfile):
    name, stages = dockerfile
    pins = dependency_pins()
    assert all(p in pins for p in PINNED_PAIR), "pyproject.toml pins the torch pair"
    installs = _pip_installs(stages)
    project_installs = 0
    for args in installs:
        operands = []
        skip = False
        for arg in args:
            if skip:
                skip = False
                continue
            if arg in ("--index-url", "-i", "--extra-index-url", "--find-links", "-f", "--target",
                       "--constraint", "-c"):
                assert arg not in ("-c", "--constraint"), f"{name}: no constraint files beside pyproject"
                skip = True
                continue
            if arg.startswith("-"):
                assert arg not in ("-r", "--requirement", "-e", "--editable"), f"{name}: pip install {arg}"
                continue
            operands.append(arg)
        if operands == ["."]:
            project_installs += 1
            continue
        named = dict(op.split("==", 1) for op in operands if "==" in op)
        assert len(named) == len(operands) and set(named) == set(PINNED_PAIR), \
            f"{name}: pip install {' '.join(args)}: only the project (.) or the pinned torch pair"
        for pkg in PINNED_PAIR:
            assert named[pkg] == pins[pkg], f"{name}: {pkg}=={named[pkg]} but pyproject.toml pins {pins[pkg]}"
    assert project_installs == 1, f"{name}: installs the project once with `pip install .`"
    copies = " ".join(c for s in stages for c in s.args("COPY"))
    assert "pyproject.toml" in copies, f"{name}: the build copies pyproject.toml"
    assert not re.search(r"requirements[^ ]*\.txt", copies), f"{name}: no requirements file"


def test_same_python_everywhere():
    """The images run the Python version CI tests with (requires-python, 3.11), the same patch
    release in both."""
    api = parse_dockerfile(DOCKERFILES["api"])
    m = re.fullmatch(r"python:(3\.\d+\.\d+)-slim-\w+", _external_images(api)[0])
    assert m, "the API image is python:<x.y.z>-slim-<debian>"
    api_version = m[1]
    worker_runs = " ".join(r for s in parse_dockerfile(DOCKERFILES["worker"]) for r in s.args("RUN"))
    m = re.search(r"uv python install (3\.\d+\.\d+)", worker_runs)
    assert m, "the worker image installs a pinned Python"
    assert m[1] == api_version, f"api Python {api_version}, worker Python {m[1]}"
    minimum = re.search(r">=\s*(3\.\d+)", PYPROJECT["project"]["requires-python"])[1]
    assert api_version.startswith("3.11.") and tuple(map(int, api_version.split(".")[:2])) >= \
        tuple(map(int, minimum.split(".")))


def test_worker_is_a_cuda_image():
    stages = parse_dockerfile(DOCKERFILES["worker"])
    final = stages[-1]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(runtime|devel)-ubuntu\d+\.\d+", final.image), final.image
    env = " ".join(final.args("ENV"))
    assert "NVIDIA_DRIVER_CAPABILITIES" in env and "compute" in env
    builder_env = " ".join(e for s in stages for e in s.args("ENV"))
    assert "DS_BUILD_OPS=0" in builder_env, "DeepSpeed installs without compiling ops"
    api_final = parse_dockerfile(DOCKERFILES["api"])[-1]
    assert not api_final.image.startswith("nvidia/"), "the API image needs no CUDA"


def _dockerignore_patterns():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns) -> bool:
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        parts = path.split("/")
        hit = any(fnmatch("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))
        if not hit and pat.startswith("**/"):
            hit = any(fnmatch(p, pat[3:]) for p in parts)
        if hit:
            ignored = not negate
    return ignored


def test_copied_sources_exist_and_are_in_the_build_context(dockerfile):
    name, stages = dockerfile
    patterns = _dockerignore_patterns()
    for stage in stages:
        for copy in stage.args("COPY"):
            argv = shlex.split(copy)
            if any(a.startswith("--from") for a in argv):
                continue
            sources = [a for a in argv if not a.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file"
                assert not _ignored(src, patterns), f"{name}: COPY {src}, but .dockerignore excludes it"


def test_dockerignore_keeps_the_context_small():
    patterns = _dockerignore_patterns()
    for path in (".venv", ".git", "runs", ".env", ".pytest_cache", ".ruff_cache", "tests",
                 "sgmim/__pycache__/x.pyc", "benchmarks/out", "sgmim.egg-info", "data"):
        assert _ignored(path, patterns), f".dockerignore lets {path} into the build context"
    for path in ("pyproject.toml", "README.md", "sgmim/data/pretrain.py", "service/main.py",
                 "service/queue.py", "deploy/healthcheck.py"):
        assert not _ignored(path, patterns), f".dockerignore excludes {path}, which the build needs"


def test_healthcheck_installed_and_default_command(dockerfile):
    name, stages = dockerfile
    final = stages[-1]
    assert any("deploy/healthcheck.py /usr/local/bin/sgmim-healthcheck" in c for c in final.args("COPY"))
    cmd = final.args("CMD")[-1]
    assert cmd.startswith('["sgmim", '), f"{name}: CMD runs the sgmim console script: {cmd}"
    assert PYPROJECT["project"]["scripts"]["sgmim"] == "sgmim.cli:app"
