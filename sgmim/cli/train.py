"""`sgmim train`: run a job spec locally, without the service (the worker runs the same entry)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer

from sgmim import rundir


def train(
    spec: Path = typer.Argument(..., help="job spec (YAML)", exists=False),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="default: runs/<job name>"),
    nproc: int = typer.Option(1, "--nproc", min=1, help="local processes (GPUs, or CPU ranks)"),
    overrides: list[str] = typer.Option([], "--set", help="key.path=value, e.g. config.schedule.steps=10"),
) -> None:
    """Run a job spec here, without the service (resumes from the run dir's checkpoint)."""
    from sgmim.spec import SpecError, load_spec
    from sgmim.train.launch import Launch, command, die_with_parent, environment

    try:
        job = load_spec(spec, overrides)
    except SpecError as exc:
        typer.echo(f"error: invalid job spec {spec}: {exc}", err=True)
        raise typer.Exit(2) from None
    run_dir = run_dir or Path("runs") / job.name
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = run_dir / rundir.SPEC
    rundir.atomic_write_text(resolved, job.model_dump_json(indent=2))
    if (run_dir / rundir.CHECKPOINTS / rundir.LATEST).exists():
        typer.echo(f"resuming from the latest checkpoint in {run_dir / 'checkpoints'}")
    launch = Launch(nproc_per_node=nproc)
    code = subprocess.call(command(resolved, run_dir, launch), env=environment(launch),
                           preexec_fn=die_with_parent)
    if code == 0:
        typer.echo(f"run dir: {run_dir}")
    else:
        typer.echo(f"error: training exited with code {code}; see {run_dir / 'train.log'}", err=True)
    raise typer.Exit(code)
