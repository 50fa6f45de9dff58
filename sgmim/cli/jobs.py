"""Client commands: submit, list, show, watch, logs, cancel, resume, checkpoints, download, eval."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table

from sgmim.cli.client import LOST_CONTACT_EXIT, Api, api_errors, fail, markup, resolve_connection, shown
from sgmim.status import TERMINAL, WATCH_EXIT_CODES, JobStatus

# Output to a pipe is never wrapped or cut (rich would fold lines and elide table cells at 80
# columns) nor coloured (rich turns colour off by itself when stdout is not a terminal).
_PIPED = not sys.stdout.isatty() and not os.environ.get("COLUMNS")
console = Console(soft_wrap=_PIPED, width=100_000 if _PIPED else None)


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
    tags: list[str] = typer.Option([], "--tag", help="a tag (repeatable; added to the spec's tags)"),
    note_text: str | None = typer.Option(None, "--note", help="a free-form note on the experiment"),
    webhook: str | None = typer.Option(None, "--webhook", help="URL POSTed when the job ends (signed)"),
) -> None:
    """Submit a job spec to the server."""
    from sgmim.spec import SpecError, apply_overrides, read_spec_data

    try:
        body = apply_overrides(read_spec_data(spec), overrides)
    except SpecError as exc:
        fail(str(exc), code=2)
    if tags:
        body["tags"] = list(dict.fromkeys([*(body.get("tags") or []), *tags]))
    if note_text is not None:
        body["note"] = note_text
    if webhook is not None:
        body["webhook"] = webhook
    if parent:
        if not isinstance(body.get("parent"), dict):
            body["parent"] = {}
        body["parent"]["job_id"] = parent
    api = connect(ctx)
    with api_errors(api.url):
        response = api.request("POST", "/jobs", json=body,
                               headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})
    job = response.json()
    what = f"[bold]{markup(job['id'])}[/bold] ({markup(job['kind'])} {markup(repr(job['name']))})"
    if response.status_code == 200:  # a replay: this key and body created the job before
        console.print(f"found existing job {what} for this idempotency key; not submitted again: "
                      f"{markup(job['status'])}")
    else:
        console.print(f"submitted job {what}: {markup(job['status'])}")
    if watch_after:
        try:
            code = follow(api, job["id"])
        except KeyboardInterrupt:
            typer.echo(f"\nstopped following; job {job['id']} goes on. Follow it again with "
                       f"`sgmim watch {job['id']}`, or stop it with `sgmim cancel {job['id']}`.", err=True)
            code = 130
        raise typer.Exit(code)


def jobs(
    ctx: typer.Context,
    status: str | None = typer.Option(None, "--status", help="queued, running, succeeded, ... (any case)"),
    kind: str | None = typer.Option(None, "--kind", help="pretrain, finetune or evaluate"),
    tags: list[str] = typer.Option([], "--tag", help="only jobs with this tag (repeatable: all of them)"),
    search: str | None = typer.Option(None, "--search", "-q", help="part of the name, any case"),
    since: str | None = typer.Option(None, "--since", help="created since: 2d, 12h, 30m, 1w or a date"),
    archived: bool = typer.Option(False, "--archived", help="list the archived jobs instead"),
    limit: int = typer.Option(20, "--limit", min=1, max=200),
    as_json: bool = typer.Option(False, "--json", help="the jobs as a JSON list, for scripts"),
) -> None:
    """List jobs, newest first."""
    from sgmim.cli.organise import duration, parse_since

    status = choice(status, [str(s) for s in JobStatus], "--status")
    kind = choice(kind, list(JOB_KINDS), "--kind")
    api = connect(ctx)
    with api_errors(api.url):
        page = api.get("/jobs", status=status, kind=kind, tag=tags or None, q=search,
                       since=parse_since(since) if since else None, archived=archived or None, limit=limit)
    if as_json:
        print(json.dumps(page["items"], indent=2))
        return
    table = Table(box=None)
    for column in ("id", "kind", "status", "progress", "created", "duration", "disk"):  # never cut
        table.add_column(column, no_wrap=True)
    table.add_column("name", overflow="ellipsis", no_wrap=True)
    table.add_column("tags", overflow="ellipsis", no_wrap=True)
    for job in page["items"]:
        created = job["created_at"][5:16].replace("T", " ")
        table.add_row(*(markup(v) for v in (
            job["id"], job["kind"], job["status"], progress_text(job), created, duration(job),
            disk_text(job), job["name"], ",".join(job.get("tags") or []))))
    console.print(table)
    if page.get("next_cursor"):
        console.print(f"(more: --limit {min(limit * 2, 200)})", style="dim")


def disk_text(job: dict) -> str:
    return size_text(job["disk_bytes"]) if job.get("disk_bytes") is not None else "-"


JOB_KINDS = ("pretrain", "finetune", "evaluate")


def choice(value: str | None, allowed: list[str], option: str) -> str | None:
    """A case-insensitive choice; a bad one exits 2 listing the valid ones."""
    if value is None:
        return None
    if value.lower() not in allowed:
        fail(f"{option} {value!r} is not one of: {', '.join(allowed)}", code=2)
    return value.lower()


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
    from sgmim.cli.organise import duration

    table = Table(show_header=False, box=None)
    for key in ("id", "kind", "name", "status", "parent_id", "attempt", "worker", "queue",
                "created_at", "started_at", "finished_at"):
        table.add_row(key, markup(job.get(key) if job.get(key) is not None else "-"))
    table.add_row("duration", duration(job))
    table.add_row("disk", disk_text(job))
    table.add_row("tags", markup(", ".join(job.get("tags") or []) or "-"))
    if job.get("note"):
        table.add_row("note", markup(job["note"], lines=True))
    if job.get("archived_at"):
        table.add_row("archived", markup(job["archived_at"]))
    table.add_row("progress", markup(progress_text(job)))
    for name, value in sorted((job.get("last_metrics") or {}).items()):
        table.add_row(f"  {markup(name)}", f"{value:.5g}" if isinstance(value, float) else markup(value))
    if job.get("error"):
        table.add_row("error", f"[red]{markup(job['error'], lines=True)}[/red]")
    console.print(table)


def watch(ctx: typer.Context, job_id: str) -> None:
    """Follow a job live; exits 0 succeeded, 1 failed, 2 cancelled, 3 lost contact with the server."""
    api = connect(ctx)
    try:
        code = follow(api, job_id)
    except KeyboardInterrupt:
        typer.echo(f"\nstopped following; job {job_id} goes on (`sgmim watch {job_id}` to follow again).",
                   err=True)
        code = 130
    raise typer.Exit(code)


def startup_hint(status: str, last_log: str | None) -> str:
    """What a job without progress is doing: from its status, then its last log line."""
    if status == JobStatus.QUEUED:
        return "queued: waiting for a worker"
    if status == JobStatus.CANCELLING:
        return "cancelling"
    if last_log:
        return markup(_LOG_PREFIX.sub("", last_log.strip()))
    return "starting (loading data, compiling)"


# "2026-11-30 19:38:41,123 [rank 0] INFO " before the message of a train.log line
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(\[rank \d+\]\s+)?([A-Z]+\s+)?")


def bar_columns() -> list:
    """At 80 columns the name and the metric values give way first; step/total, epoch and the
    ETA are never elided."""
    fixed = Column(no_wrap=True)
    return [TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                       max_width=28)),
            BarColumn(bar_width=None, table_column=Column(ratio=1, min_width=6)),
            MofNCompleteColumn(table_column=fixed),
            TextColumn("epoch {task.fields[epoch]}", table_column=fixed),
            TimeRemainingColumn(table_column=fixed),
            TextColumn("{task.fields[detail]}", table_column=Column(no_wrap=True, overflow="ellipsis",
                                                                    ratio=1, min_width=0))]


def follow(api: Api, job_id: str) -> int:
    """Follow a job to its end; returns the watch exit code (LOST_CONTACT_EXIT when the server
    stayed unreachable)."""
    with api_errors(api.url, connect_code=LOST_CONTACT_EXIT):
        job = api.get(f"/jobs/{job_id}")
        total = (job.get("progress") or {}).get("total_steps")
        step = (job.get("progress") or {}).get("step")
        latest: dict[str, float] = {}
        final, last_log = job["status"], None
        # into a pipe rich draws the bar once, at the end: at a terminal's width, not the pipe's
        bar_console = Console(width=100) if _PIPED else console
        with Progress(*bar_columns(), console=bar_console, transient=False, expand=True) as bar:
            task = bar.add_task(f"{markup(job['name'])} ({markup(job_id)})", total=total,
                                completed=step or 0, epoch="-",
                                detail="" if step is not None else startup_hint(final, None))
            for kind, data in api.events(job_id):
                if kind == "metric":
                    latest[data["name"]] = data["value"]
                    step = data.get("step") or 0
                    if total is None:
                        total = api.retrying(lambda: api.get(f"/jobs/{job_id}")).get("progress", {}) \
                            .get("total_steps")
                    bar.update(task, total=total, completed=step,
                               epoch=f"{data['epoch']:.2f}" if data.get("epoch") is not None else "-",
                               detail=" ".join(filter(None, (_speed(latest), _losses(latest)))))
                elif kind == "log":
                    last_log = data.get("line")
                    if step is None:
                        bar.update(task, detail=startup_hint(final, last_log))
                elif kind == "status":
                    final = data["status"]
                    if step is None:
                        bar.update(task, detail=startup_hint(final, last_log))
                    if not data.get("final"):
                        bar.console.print(f"status: {markup(data['status'])}"
                                          + (f" (attempt {data['attempt']})" if data.get("attempt") else ""))
            job = api.retrying(lambda: api.get(f"/jobs/{job_id}"))
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
    with api_errors(api.url, connect_code=LOST_CONTACT_EXIT if follow_log else 1):
        lines = api.get(f"/jobs/{job_id}/logs", tail=tail)["lines"]
        for line in lines:
            print_log(line["line"])
        if not follow_log:
            return
        after = lines[-1]["seq"] if lines else 0
        try:
            for kind, data in api.events(job_id, after=after):
                if kind == "log":
                    print_log(data["line"])
        except KeyboardInterrupt:
            raise typer.Exit(130) from None


def print_log(line: str) -> None:
    """A log line as it is (never wrapped, no markup), flushed for `| grep`; control characters
    appear as escapes, so a line cannot drive the terminal."""
    sys.stdout.write(shown(line.rstrip("\n")) + "\n")
    sys.stdout.flush()


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
        table.add_row(markup(c["name"]), markup(c["kind"]), markup(step),
                      size_text(c["size_bytes"]), markup(c["created_at"][:19].replace("T", " ")))
    console.print(table)


def size_text(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def download(
    ctx: typer.Context,
    job_id: str,
    name: str | None = typer.Argument(None, help="checkpoint name (default: the exported model)"),
    output: Path | None = typer.Option(None, "-o", "--output",
                                       help="file to write (default: the name the server gives it)"),
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
        with api.stream(f"/jobs/{job_id}/checkpoints/{chosen['name']}") as response:
            output = output or Path(served_filename(response.headers.get("content-disposition"))
                                    or f"{job_id}-{Path(chosen['name']).name}")
            tmp = output.with_name(f".{output.name}.part")
            size = int(response.headers.get("content-length") or 0)
            # a bar only on a terminal (rich draws none into a pipe)
            with tmp.open("wb") as f, Progress(*download_columns(), console=console, transient=True) as bar:
                task = bar.add_task(markup(chosen["name"]), total=size or None)
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
                    bar.advance(task, len(chunk))
        tmp.replace(output)
    console.print(f"wrote {markup(output)} ({size_text(output.stat().st_size)})")


def served_filename(disposition: str | None) -> str | None:
    """The file name of a `Content-Disposition: attachment; filename="..."` header, without
    any directory part (a server never chooses where the file goes)."""
    match = re.search(r'filename="?([^";]+)"?', disposition or "")
    name = Path(match.group(1)).name if match else ""
    return name if name not in ("", ".", "..") else None


def download_columns() -> list:
    return [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn()]


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
