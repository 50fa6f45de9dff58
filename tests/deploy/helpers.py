"""Shared parsing of the deployment tests: compose files, interpolation, Dockerfiles, .env."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
OVERRIDES = {p.name: p for p in sorted(DEPLOY.glob("compose.*.yml"))}
ENV_EXAMPLE = DEPLOY / ".env.example"
DOCKERFILES = {"api": DEPLOY / "api.Dockerfile", "worker": DEPLOY / "worker.Dockerfile"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|API_KEY|CREDENTIAL|(^|_)AUTH($|_)", re.I)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def interpolations(text: str) -> list[re.Match]:
    return list(INTERPOLATION.finditer(text))


def walk_strings(node, path: str = ""):
    """(path, string) for every string value and mapping key in a decoded YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            key_path = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield key_path + "#key", key
            yield from walk_strings(value, key_path)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def env_mapping(service: dict) -> dict[str, str]:
    """A service's `environment` as a dict (mapping or KEY=VALUE list form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_argv(value) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(value)


def referenced_variables(*paths: Path) -> dict[str, set[str]]:
    """Variable name -> the interpolation operators it is used with ('', ':-', ':?', ...), over
    the decoded documents (comments are not read)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for _, value in walk_strings(load_yaml(path)):
            for m in interpolations(value):
                found.setdefault(m["name"], set()).add(m["op"] or "")
    return found


# ------------------------------------------------------------------------------- Dockerfiles

@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages with their (KEYWORD, arguments) instructions; comments dropped, continuations joined."""
    logical, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            parts = [p for p in parts if not p.startswith("--platform")]
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        else:
            assert keyword in ("ARG",), f"{path.name}: {keyword} before the first FROM"
    return stages


def dependency_pins() -> dict[str, str]:
    """Exact `name==version` pins of pyproject.toml's dependencies (the torch pair)."""
    pins = {}
    for requirement in PYPROJECT["project"]["dependencies"]:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;,]+)\s*", requirement)
        if m:
            pins[m[1].lower()] = m[2]
    return pins
