"""The README's commands match the code: every `sgmim ...` line names a real command with real
options, every `make` target exists, and every route of the REST table is served by the app.
(What the commands do is exercised by the CLI, worker and demo tests.)"""

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from sgmim.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def bash_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def inline_sgmim_commands() -> list[str]:
    return [c for c in re.findall(r"`(sgmim [^`]+)`", README) if "..." not in c]


def resolve(words: list[str]):
    """The (typer/click) command a command line names, and the words after its name."""
    command = typer.main.get_command(app)
    rest = words[1:]
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"`{' '.join(words)}`: no command {name!r}"
        command = command.commands[name]
    return command, rest


def option_names(command) -> set[str]:
    root = typer.main.get_command(app)
    params = [*command.params, *root.params]
    return {opt for p in params if p.param_type_name == "option" for opt in (*p.opts, *p.secondary_opts)}


SGMIM_LINES = [line for line in bash_lines() if line.startswith("sgmim ")] + inline_sgmim_commands()


def test_the_readme_has_commands_to_check():
    assert len(SGMIM_LINES) >= 15


@pytest.mark.parametrize("line", SGMIM_LINES)
def test_sgmim_commands_exist(line):
    command, rest = resolve(shlex.split(line))
    known = option_names(command)
    for word in rest:
        if word.startswith("-"):
            assert word.split("=")[0] in known, f"`{line}`: {command.name} has no option {word}"


def test_make_targets_exist():
    makefile = (ROOT / "Makefile").read_text()
    for line in bash_lines():
        if line.startswith("make "):
            target = line.split()[1]
            assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target}"


def test_rest_table_routes_are_served():
    from service.main import create_app
    from service.settings import Settings

    schema = create_app(Settings(data_dir=ROOT / ".pytest-readme-unused", migrate_on_start=False)).openapi()
    rows = re.findall(r"^\| `(GET|POST|PATCH|DELETE) (/[^`]*)` \|", README, re.M)
    assert len(rows) >= 11
    for method, path in rows:
        full = f"/api/v1{path}" if path.startswith(("/jobs", "/studies")) else path
        full = full.replace("{id}", "{job_id}")
        assert full in schema["paths"], f"README route {method} {full} is not served"
        assert method.lower() in schema["paths"][full], f"{full} does not accept {method}"
