"""Client commands: submit, list, show, watch, logs, cancel, resume, checkpoints, download, eval."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sgmim.cli.client import Api, api_errors, fail, markup, resolve_connection, shown
from sgmim.status import TERMINAL, WATCH_EXIT_CODES, JobStatus

console = Console()


def connect(ctx: typer.Context) -> Api:
    url, token = resolve_connection(*(ctx.obj or (None, None)))
    return Api(url, token)


def submit(
    ctx: typer.Context,
    spec: Path = typer.Argument(..., help="job spec (YAML)"),
    parent: str | None = typer.Option(None, "--parent", help="parent job id (fine-tune: a pretraining "
                                                              "job; evaluate: a fine-tuning job)"),
    overrides: list[str] = typer.Option([], "--set", help="key.path=value, e.g. config.schedule.steps=10"),
    watch_after: bool = typer.Option(False, "--watch", help="follow the job until it ends"),
    idempotency_key: str | None = typer.Option(None, "--idempotency-key",
                                               help="resubmitting with the same key returns the same job"),
) -> None:
    """Submit a job spec to the server."""
    from sgmim.spec import SpecError, apply_overrides, read_spec_data

    try:
        body = apply_overrides(read_spec_data(spec), overrides)
    except SpecError as exc:
        fail(str(exc), code=2)
    if parent:
        if not isinstance(body.get("parent"), dict):
            body["parent"] = {}
        body["parent"]["job_id"] = parent
    api = connect(ctx)
    with api_errors(api.url):
        job = api.post("/jobs", body, headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})
    console.print(f"submitted job [bold]{markup(job['id'])}[/bold] ({markup(job['kind'])} "
                  f"{markup(repr(job['name']))}): {markup(job['status'])}")
    if watch_after:
        raise typer.Exit(follow(api, job["id"]))


def jobs(
    ctx: typer.Context,
    status: str | None = typer.Option(None, "--status", help="queued, running, succeeded, ..."),
    kind: str | None = typer.Option(None, "--kind", help="pretrain, finetune or evaluate"),
    limit: int = typer.Option(20, "--limit", min=1, max=500),
) -> None:
    """List jobs, newest first."""
    api = connect(ctx)
    with api_errors(api.url):
        page = api.get("/jobs", status=status, kind=kind, limit=limit)
    table = Table(box=None)
    for column in ("id", "kind", "status", "progress", "created"):  # never cut: users copy ids
        table.add_column(column, no_wrap=True)
    table.add_column("name", overflow="ellipsis", no_wrap=True)
    for job in page["items"]:
        table.add_row(*(markup(v) for v in (job["id"], job["kind"], job["status"], progress_text(job),
                                            job["created_at"][5:16].replace("T", " "), job["name"])))
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"(more: --limit {limit * 2})", style="dim")


def progress_text(job: dict) -> str:
    p = job.get("progress") or {}
    if p.get("step") is None:
        return "-"
    return f"{p['step']}/{p['total_steps']}" if p.get("total_steps") else str(p["step"])


def show(ctx: typer.Context, job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show one job: status, progress, attempts, error, latest metrics."""
    api = connect(ctx)
    with api_errors(api.url):
        job = api.get(f"/jobs/{job_id}")
    if as_json:
        console.print_json(json.dumps(job))
        return
    table = Table(show_header=False, box=None)
    for key in ("id", "kind", "name", "status", "parent_id", "attempt", "worker", "queue",
                "created_at", "started_at", "finished_at"):
        table.add_row(key, markup(job.get(key) if job.get(key) is not None else "-"))
    table.add_row("progress", markup(progress_text(job)))
    for name, value in sorted((job.get("last_metrics") or {}).items()):
        table.add_row(f"  {markup(name)}", f"{value:.5g}" if isinstance(value, float) else markup(value))
    if job.get("error"):
        table.add_row("error", f"[red]{markup(job['error'], lines=True)}[/red]")
    console.print(table)


def watch(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live; exits 0 succeeded, 1 failed, 2 cancelled."""
    api = connect(ctx)
    raise typer.Exit(follow(api, job_id))


def follow(api: Api, job_id: str) -> int:
    with api_errors(api.url):
        job = api.get(f"/jobs/{job_id}")
        total = (job.get("progress") or {}).get("total_steps")
        latest: dict[str, float] = {}
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("epoch {task.fields[epoch]}"), TimeRemainingColumn(),
                   TextColumn("{task.fields[speed]}"), TextColumn("{task.fields[losses]}")]
        final = job["status"]
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(f"{markup(job['name'])} ({markup(job_id)})", total=total, epoch="-", speed="",
                                losses="")
            for kind, data in api.events(job_id):
                if kind == "metric":
                    latest[data["name"]] = data["value"]
                    if total is None:
                        total = (api.get(f"/jobs/{job_id}").get("progress") or {}).get("total_steps")
                    bar.update(task, total=total, completed=data.get("step") or 0,
                               epoch=f"{data['epoch']:.2f}" if data.get("epoch") is not None else "-",
                               speed=_speed(latest), losses=_losses(latest))
                elif kind == "status":
                    final = data["status"]
                    if not data.get("final"):
                        bar.console.print(f"status: {markup(data['status'])}"
                                          + (f" (attempt {data['attempt']})" if data.get("attempt") else ""))
            job = api.get(f"/jobs/{job_id}")
            # the total may reach the server only with the outcome (a run shorter than a heartbeat)
            done = job.get("progress") or {}
            if done.get("step") is not None:
                bar.update(task, total=done.get("total_steps") or total, completed=done["step"])
    final = job["status"] if job["status"] in TERMINAL else final
    style = {JobStatus.SUCCEEDED: "green", JobStatus.FAILED: "red"}.get(final, "yellow")
    console.print(f"job {markup(job_id)} [{style}]{markup(final)}[/{style}]")
    if job.get("error"):
        console.print(f"[red]{markup(job['error'], lines=True)}[/red]")
    # `sgmim watch` / `submit --watch` exit with the job's final status.
    return WATCH_EXIT_CODES.get(final, 1)


def _speed(latest: dict) -> str:
    value = latest.get("images_per_s")
    return f"{value:.0f} img/s" if value else ""


def _losses(latest: dict) -> str:
    names = [n for n in ("loss", "loss_img", "loss_struct", "val_rmse") if latest.get(n) is not None]
    return " ".join(f"{n} {latest[n]:.4f}" for n in names)


def logs(
    ctx: typer.Context,
    job_id: str,
    tail: int = typer.Option(100, "--tail", "-n", min=1, max=10_000),
    follow_log: bool = typer.Option(False, "--follow", "-f", help="print new lines until the job ends"),
) -> None:
    """Print the last lines of a job's train.log (and follow it with -f)."""
    api = connect(ctx)
    with api_errors(api.url):
        lines = api.get(f"/jobs/{job_id}/logs", tail=tail)["lines"]
        for line in lines:
            console.print(shown(line["line"]), markup=False, highlight=False)
        if not follow_log:
            return
        after = lines[-1]["seq"] if lines else 0
        for kind, data in api.events(job_id, after=after):
            if kind == "log":
                console.print(shown(data["line"]), markup=False, highlight=False)


def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a queued or running job."""
    api = connect(ctx)
    with api_errors(api.url):
        job = api.post(f"/jobs/{job_id}/cancel")
    console.print(f"job {markup(job_id)}: {markup(job['status'])}")


def resume(ctx: typer.Context, job_id: str) -> None:
    """Requeue a failed or cancelled job; it continues from its latest checkpoint."""
    api = connect(ctx)
    with api_errors(api.url):
        job = api.post(f"/jobs/{job_id}/resume")
    console.print(f"job {markup(job_id)}: {markup(job['status'])}")


def checkpoints(ctx: typer.Context, job_id: str) -> None:
    """List a job's DeepSpeed checkpoints and exported encoder."""
    api = connect(ctx)
    with api_errors(api.url):
        items = api.get(f"/jobs/{job_id}/checkpoints")["items"]
    table = Table("name", "kind", "step", "size", "created", box=None)
    for c in items:
        step = c["step"] if c["step"] is not None else "-"
        table.add_row(markup(c["name"]), markup(c["kind"]), markup(step), _size(c["size_bytes"]),
                      markup(c["created_at"][:19].replace("T", " ")))
    console.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def download(
    ctx: typer.Context,
    job_id: str,
    name: str | None = typer.Argument(None, help="checkpoint name (default: the exported model)"),
    output: Path | None = typer.Option(None, "-o", "--output", help="file to write"),
) -> None:
    """Download a checkpoint: the exported safetensors, or a DeepSpeed tag as a .tar."""
    api = connect(ctx)
    with api_errors(api.url):
        items = api.get(f"/jobs/{job_id}/checkpoints")["items"]
        if not items:
            fail(f"job {job_id} has no checkpoints yet")
        exports = [c for c in items if c["kind"] in ("encoder", "model")]
        chosen = next((c for c in items if c["name"] == name), None) if name else \
            (exports or items)[-1]
        if chosen is None:
            fail(f"job {job_id} has no checkpoint {name!r}; it has: "
                 + ", ".join(c["name"] for c in items), code=2)
        suffix = ".tar" if chosen["kind"] == "deepspeed" else ""
        output = output or Path(f"{job_id}-{Path(chosen['name']).name}{suffix}")
        tmp = output.with_name(f".{output.name}.part")
        with api.stream(f"/jobs/{job_id}/checkpoints/{chosen['name']}") as response, tmp.open("wb") as f, \
                Progress(console=console, transient=True) as bar:
            size = int(response.headers.get("content-length") or 0)
            task = bar.add_task(markup(chosen["name"]), total=size or None)
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
                bar.advance(task, len(chunk))
        tmp.replace(output)
    console.print(f"wrote {markup(output)} ({_size(output.stat().st_size)})")


def evaluation(ctx: typer.Context, job_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Show a job's evaluation results (eval.json)."""
    api = connect(ctx)
    with api_errors(api.url):
        result = api.get(f"/jobs/{job_id}/evaluation")
    if as_json:
        console.print_json(json.dumps(result))
        return
    console.print(f"{markup(result.get('task'))} on {markup(result.get('dataset'))} / "
                  f"{markup(result.get('split'))}: {markup(result.get('num_images'))} images")
    table = Table("metric", "value", box=None)
    for key, value in (result.get("metrics") or {}).items():
        table.add_row(markup(key), f"{value:.4f}" if isinstance(value, float) else markup(value))
    console.print(table)
    if result.get("parent_chain"):
        chain = [*result["parent_chain"], result.get("job_id") or job_id]
        console.print("lineage: " + " → ".join(markup(j) for j in chain))
