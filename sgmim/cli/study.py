"""`sgmim study run | status | retry`: a study's grid of chains through the service, and its table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.markdown import Markdown
from rich.table import Table

from sgmim.cli.client import api_errors, fail
from sgmim.cli.jobs import connect, console, progress_text
from sgmim.spec.study import STAGES
from sgmim.status import JobStatus

study_app = typer.Typer(help="Studies: the paper's comparisons as one command (a grid of pretrain → "
                             "fine-tune → evaluate chains over methods, settings and seeds).",
                        no_args_is_help=True)

OUT_HELP = "output folder: state file and results (default runs/studies/<study name>)"


def open_study(ctx: typer.Context, path: Path, out: Path | None):
    """Load and expand the study; connect; the runner with its state file."""
    from sgmim.spec import SpecError
    from sgmim.spec.study import load_study
    from sgmim.study.grid import expand
    from sgmim.study.runner import StudyRunner

    try:
        study, bases = load_study(path)
        cells = expand(study, bases)
    except SpecError as exc:
        fail(f"invalid study {path}: {exc}", code=2)
    out = out or Path("runs") / "studies" / study.name
    api = connect(ctx)
    runner = StudyRunner(api, study.name, cells, out, echo=console.print)
    problem = runner.check_server()
    if problem:
        fail(problem, code=2)
    return study, cells, runner


@study_app.command()
def run(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="study spec (YAML)"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    poll: float = typer.Option(2.0, "--poll", min=0.1, help="seconds between status checks"),
) -> None:
    """Submit the study's chains (finished cells are not submitted again), wait, write the table."""
    study, cells, runner = open_study(ctx, path, out)
    console.print(f"study {study.name}: {len(study.rows())} rows × {len(study.seeds)} seeds = "
                  f"{len(cells)} cells; state and results in {runner.out}")
    with api_errors(runner.api.url), stop_waiting(path, runner):
        progress = runner.run(poll_s=poll)
    console.print(f"{runner.created} new job(s) submitted by this run")
    finish(study, cells, runner, progress, path)


@study_app.command()
def retry(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="study spec (YAML)"),
    cell_ids: list[str] = typer.Option([], "--cell", help="cell id (repeatable; default: every failed "
                                                          "or cancelled cell)"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    poll: float = typer.Option(2.0, "--poll", min=0.1, help="seconds between status checks"),
) -> None:
    """Resume the failed or cancelled job of cells and carry their chains on; other cells are left alone."""
    study, cells, runner = open_study(ctx, path, out)
    known = {cell.id: cell for cell in cells}
    unknown = [c for c in cell_ids if c not in known]
    if unknown:
        fail(f"no cell {', '.join(unknown)} in {study.name}; cells: {', '.join(known)}", code=2)
    chosen = [known[c] for c in cell_ids] if cell_ids else cells
    with api_errors(runner.api.url):
        resumed = runner.resume_stopped(chosen)
        if not resumed:
            console.print("no failed or cancelled cell to retry")
        with stop_waiting(path, runner):
            runner.run(resumed, poll_s=poll)
        progress = {cell.id: runner.peek(cell) for cell in cells}
    finish(study, cells, runner, progress, path)


@contextmanager
def stop_waiting(path: Path, runner) -> Iterator[None]:
    """Ctrl-C stops the waiting, not the jobs: the next run carries on where this one stopped."""
    try:
        yield
    except KeyboardInterrupt:
        console.print(f"stopped waiting; the submitted jobs go on. Continue with: sgmim study run {path} "
                      f"--out {runner.out}")
        raise typer.Exit(130) from None


def finish(study, cells, runner, progress, path: Path) -> None:
    """Write the results over the finished cells; list the others; exit 1 when any stopped."""
    from sgmim.study.collect import write_results

    with api_errors(runner.api.url):
        written = write_results(runner.api, study, cells, progress,
                                {c: v["jobs"] for c, v in runner.state.data["cells"].items()}, runner.out)
    console.print(Markdown(written.markdown))
    console.print("results: " + ", ".join(str(f) for f in written.files))
    stopped = {cid: p for cid, p in progress.items() if p.stopped}
    waiting = [cid for cid, p in progress.items() if not p.settled]
    for cid, p in stopped.items():
        console.print(f"[red]cell {cid}: {p.stage} job {p.job_id} {p.status}[/red] "
                      f"(see `sgmim logs {p.job_id}`)")
    if stopped:
        cells_opt = " ".join(f"--cell {cid}" for cid in stopped)
        console.print(f"retry: sgmim study retry {path} --out {runner.out} {cells_opt}")
        raise typer.Exit(1)
    if waiting:
        console.print(f"{len(waiting)} cell(s) not finished: {', '.join(waiting)}")


@study_app.command()
def status(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="study spec (YAML)"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Progress per cell: each stage's job, its status and step."""
    study, cells, runner = open_study(ctx, path, out)
    with api_errors(runner.api.url):
        report = runner.status()
    if as_json:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"study {study.name} ({runner.out})", box=None)
    width = max(len(cell.id) for cell in cells)
    table.add_column("cell", no_wrap=True, min_width=width)
    for stage in STAGES:
        table.add_column(stage, no_wrap=True, overflow="ellipsis")
    done = 0
    for cell_id, cell in report.items():
        stages = [_stage_text(cell["stages"][stage]) for stage in STAGES]
        done += cell["stages"][STAGES[-1]]["status"] == JobStatus.SUCCEEDED
        table.add_row(cell_id, *stages)
    console.print(table)
    console.print(f"{done}/{len(report)} cells done")


def _stage_text(stage: dict) -> str:
    if stage["id"] is None:
        return "-"
    style = {JobStatus.SUCCEEDED: "green", JobStatus.FAILED: "red", JobStatus.CANCELLED: "red"}.get(
        stage["status"], "yellow")
    step = progress_text({"progress": stage["progress"]})
    extra = f" {step}" if stage["status"] in (JobStatus.RUNNING, JobStatus.CANCELLING) and step != "-" else ""
    return f"[{style}]{stage['status']}[/{style}]{extra} {stage['id']}"
