"""`sgmim study run | retry | status | cancel | delete | list`: studies the service runs
(/api/v1/studies), followed from here, with their results table written locally."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from sgmim.cli.client import Api, ApiError, api_errors, fail, markup
from sgmim.cli.jobs import connect, console, progress_text
from sgmim.status import JobStatus

study_app = typer.Typer(help="Studies: the paper's comparisons as one command (a grid of pretrain → "
                             "fine-tune → evaluate chains over methods, settings and seeds, run by the "
                             "service).", no_args_is_help=True)

OUT_HELP = "folder for the results (default runs/studies/<study name>)"
POLL_HELP = "seconds between status checks"
STUDY_HELP = "the study's name, or its spec file (YAML)"
SPEC_SUFFIXES = (".yaml", ".yml", ".json")


def load_file(path: Path):
    """The study file validated and expanded here (a bad one is named before anything is sent):
    (spec, base jobs)."""
    from sgmim.spec import SpecError
    from sgmim.spec.study import load_study
    from sgmim.study.grid import expand

    try:
        study, bases = load_study(path)
        expand(study, bases)
    except SpecError as exc:
        fail(f"invalid study {path}: {exc}", code=2)
    return study, bases


def study_name(ref: str) -> str:
    """A study's name as given, or the name in the study file `ref` names."""
    path = Path(ref)
    if path.is_file() or path.suffix in SPEC_SUFFIXES or "/" in ref:
        return load_file(path)[0].name
    return ref


def out_folder(out: Path | None, name: str) -> Path:
    return out or Path("runs") / "studies" / name


@study_app.command()
def run(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="study spec (YAML)"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    poll: float = typer.Option(2.0, "--poll", min=0.1, help=POLL_HELP),
) -> None:
    """Post the study to the service, follow it until each cell is done or stopped, write the table."""
    # the jobs it made before are replayed, not submitted again; the service advances the study,
    # so Ctrl-C stops the waiting here, not the study
    from sgmim.spec.study import inline_study

    study, bases = load_file(path)
    api, out = connect(ctx), out_folder(out, study.name)
    with api_errors(api.url):
        posted = api.post("/studies", inline_study(study, bases))
    console.print(f"study {study.name}: {len(study.rows())} rows × {len(study.seeds)} seeds = "
                  f"{posted['n_cells']} cells on {api.url}, {posted['submitted']} new job(s) submitted; "
                  f"results in {out}")
    if posted["cancelled_at"] is not None:
        console.print(f"[yellow]study {study.name} was cancelled at {_when(posted['cancelled_at'])}: running "
                      f"it again submits and resumes nothing. Resume it with: sgmim study retry "
                      f"{study.name}[/yellow]")
    wait_and_write(api, study.name, out, poll, again=f"sgmim study run {path} --out {out}")


@study_app.command()
def retry(
    ctx: typer.Context,
    study: str = typer.Argument(..., help=STUDY_HELP),
    cell_ids: list[str] = typer.Option([], "--cell", help="cell id (repeatable; default: every failed "
                                                          "or cancelled cell)"),
    out: Path | None = typer.Option(None, "--out", help=OUT_HELP),
    poll: float = typer.Option(2.0, "--poll", min=0.1, help=POLL_HELP),
) -> None:
    """Resume stopped cells (each job from its checkpoint), also a cancelled study's; follow as `run`."""
    name = study_name(study)
    api, out = connect(ctx), out_folder(out, name)
    with api_errors(api.url):
        retried = api.request("POST", f"/studies/{name}/retry", params={"cell": cell_ids}).json()
    console.print(f"study {name} retried: {retried['submitted']} new job(s) submitted; results in {out}")
    wait_and_write(api, name, out, poll, again=f"sgmim study retry {study} --out {out}")


def wait_and_write(api: Api, name: str, out: Path, poll: float, again: str) -> None:
    """Follow the study until it settles, then write its results; exit 1 when a cell stopped or
    was left unfinished (a cancelled study)."""
    from rich.markdown import Markdown

    from sgmim.study.collect import done, follow, stopped, write_results

    with api_errors(api.url):
        try:
            study = follow(api, name, poll, echo=console.print)
        except KeyboardInterrupt:
            console.print(f"stopped waiting; the service keeps advancing study {name} (stop it with "
                          f"`sgmim study cancel {name}`). Wait for it again with: {again}")
            raise typer.Exit(130) from None
        written = write_results(api, study, out)
    console.print(Markdown(written.markdown))
    console.print("results: " + ", ".join(str(f) for f in written.files))
    halted = [c for c in study["cells"] if stopped(c)]
    unfinished = [c for c in study["cells"] if not done(c) and not stopped(c)]
    for cell in halted:
        job = cell["stages"][cell["stage"]]["job_id"]
        console.print(f"[red]cell {cell['id']}: {cell['stage']} job {job} {cell['status']}[/red] "
                      f"(see `sgmim logs {job}`)")
    if unfinished:
        console.print(f"{len(unfinished)} cell(s) not finished (the study was cancelled): "
                      + ", ".join(c["id"] for c in unfinished))
    if halted or unfinished:
        cells_opt = " ".join(f"--cell {c['id']}" for c in halted + unfinished)
        console.print(f"retry: sgmim study retry {name} --out {out} {cells_opt}")
        raise typer.Exit(1)


@study_app.command()
def status(
    ctx: typer.Context,
    study: str = typer.Argument(..., help=STUDY_HELP),
    as_json: bool = typer.Option(False, "--json", help="the study as GET /api/v1/studies/{name} answers"),
) -> None:
    """Progress per cell: each stage's job, its status and step."""
    from sgmim.spec.study import STAGES  # here: every other command starts without the spec models

    name = study_name(study)
    api = connect(ctx)
    with api_errors(api.url):
        report = api.get(f"/studies/{name}")
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"study {markup(name)} ({report['state']})", box=None)
    table.add_column("cell", no_wrap=True, min_width=max(len(c["id"]) for c in report["cells"]))
    for stage in STAGES:
        table.add_column(stage, no_wrap=True, overflow="ellipsis")
    for cell in report["cells"]:
        table.add_row(markup(cell["id"]), *(_stage_text(cell["stages"][stage]) for stage in STAGES))
    console.print(table)
    console.print(f"{report['done']}/{report['n_cells']} cells done, {report['stopped']} stopped")


def _when(timestamp: str) -> str:
    """An API time as `YYYY-MM-DD HH:MM` (UTC)."""
    return timestamp[:16].replace("T", " ")


def _stage_text(stage: dict) -> str:
    if stage["job_id"] is None:
        return "-"
    style = {JobStatus.SUCCEEDED: "green", JobStatus.FAILED: "red", JobStatus.CANCELLED: "red"}.get(
        stage["status"], "yellow")
    step = progress_text(stage)
    extra = f" {step}" if stage["status"] in (JobStatus.RUNNING, JobStatus.CANCELLING) and step != "-" else ""
    return f"[{style}]{stage['status']}[/{style}]{extra} {stage['job_id']}"


@study_app.command()
def cancel(ctx: typer.Context, study: str = typer.Argument(..., help=STUDY_HELP)) -> None:
    """Cancel the study's jobs in flight and stop the service advancing it; `retry` resumes it."""
    name = study_name(study)
    api = connect(ctx)
    with api_errors(api.url):
        cancelled = api.post(f"/studies/{name}/cancel")
    stopping = sum(c["status"] == JobStatus.CANCELLING for c in cancelled["cells"])
    console.print(f"study {name} cancelled: {cancelled['done']}/{cancelled['n_cells']} cells done, "
                  f"{cancelled['stopped']} stopped" + (f", {stopping} stopping" if stopping else "")
                  + f". Resume it with: sgmim study retry {name}")


@study_app.command()
def delete(ctx: typer.Context, study: str = typer.Argument(..., help=STUDY_HELP)) -> None:
    """Delete the study (refused while one of its jobs is queued or running); its jobs stay."""
    name = study_name(study)
    api = connect(ctx)
    with api_errors(api.url):
        try:
            api.request("DELETE", f"/studies/{name}")
        except ApiError as exc:
            if exc.status != 409:
                raise
            fail(f"{exc} (from here: sgmim study cancel {name})", code=2)
    console.print(f"deleted study {name}; its jobs stay (`sgmim jobs`, `sgmim delete JOB_ID`)")


@study_app.command("list")
def list_studies(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="the studies as a JSON list, for scripts"),
) -> None:
    """The service's studies, newest first."""
    api = connect(ctx)
    with api_errors(api.url):
        items = api.get("/studies")["items"]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    table = Table(box=None)
    for column in ("study", "cells", "done", "stopped", "state", "created"):
        table.add_column(column, no_wrap=True)
    for s in items:
        table.add_row(markup(s["name"]), str(s["n_cells"]), str(s["done"]), str(s["stopped"]),
                      s["state"], _when(s["created_at"]))
    console.print(table)
    if not items:
        console.print("no study yet: sgmim study run examples/studies/sgmim-vs-simmim-cpu.yaml", style="dim")

