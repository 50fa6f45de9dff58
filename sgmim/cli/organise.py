"""Organising experiments: tag, note, compare, archive, delete, prune; helpers for `jobs`."""

from __future__ import annotations

import datetime as dt
import re

import typer
from rich.table import Table

from sgmim.cli.client import Api, ApiError, api_errors, fail
from sgmim.cli.jobs import connect, console, size_text

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str) -> str:
    """`2d`, `12h`, `30m`, `1w` ago, or an ISO date/time (UTC unless it says otherwise) → ISO."""
    now = dt.datetime.now(dt.UTC)
    if match := _RELATIVE.fullmatch(value.strip().lower()):
        return (now - dt.timedelta(seconds=int(match[1]) * _UNIT_S[match[2]])).isoformat()
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"--since {value!r}: give an age such as 2d, 12h, 30m, 1w, or a date such as 2026-11-30",
             code=2)
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).isoformat()


def duration(job: dict) -> str:
    """How long the job has run: started → finished (or now, while it runs)."""
    if not job.get("started_at"):
        return "-"
    start = dt.datetime.fromisoformat(job["started_at"])
    end = dt.datetime.fromisoformat(job["finished_at"]) if job.get("finished_at") else dt.datetime.now(dt.UTC)
    seconds = max(0, int((end - start).total_seconds()))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}"


def tag(
    ctx: typer.Context,
    job_id: str,
    tags: list[str] = typer.Argument(None, help="tags to add"),
    remove: list[str] = typer.Option([], "--remove", "-r", help="a tag to take off (repeatable)"),
) -> None:
    """Add tags to a job (or take them off with --remove)."""
    if not tags and not remove:
        fail("name tags to add, or --remove TAG", code=2)
    api = connect(ctx)
    with api_errors(api.url):
        job = api.request("PATCH", f"/jobs/{job_id}", json={"add_tags": tags or [],
                                                           "remove_tags": remove}).json()
    console.print(f"job {job_id} tags: {', '.join(job['tags']) or '-'}")


def note(ctx: typer.Context, job_id: str,
         text: str = typer.Argument(..., help="the note ('' clears it)")) -> None:
    """Set a job's free-form note (replaces the previous one)."""
    api = connect(ctx)
    with api_errors(api.url):
        api.request("PATCH", f"/jobs/{job_id}", json={"note": text})
    console.print(f"job {job_id}: note {'set' if text else 'cleared'}")


def archive(ctx: typer.Context, job_id: str,
            undo: bool = typer.Option(False, "--undo", help="bring it back into `sgmim jobs`")) -> None:
    """Hide a job from `sgmim jobs` without deleting anything (`jobs --archived` lists them)."""
    api = connect(ctx)
    with api_errors(api.url):
        api.request("PATCH", f"/jobs/{job_id}", json={"archived": not undo})
    console.print(f"job {job_id}: {'unarchived' if undo else 'archived'}")


def delete(
    ctx: typer.Context,
    job_id: str,
    force: bool = typer.Option(False, "--force", help="also a job with fine-tuned children "
                                                      "(else its export is kept)"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Delete an ended job and its artifacts on disk (refused while it runs)."""
    if not yes:
        typer.confirm(f"delete job {job_id} and its checkpoints?", abort=True)
    api = connect(ctx)
    with api_errors(api.url):
        result = api.request("DELETE", f"/jobs/{job_id}", params={"force": force}).json()
    if result["deleted"]:
        console.print(f"deleted job {job_id} ({size_text(result['freed_bytes'])} freed)")
    else:
        console.print(f"job {job_id} has children ({', '.join(result['children'])}): kept its row and "
                      f"{', '.join(result['kept']) or 'nothing'}, archived it, removed the rest "
                      f"({size_text(result['freed_bytes'])} freed); --force deletes it all")


def prune(
    ctx: typer.Context,
    job_id: str,
    keep: int | None = typer.Option(None, "--keep", min=0,
                                    help="DeepSpeed tags to keep, newest first "
                                         "(default: the server's keep_checkpoints, else 1)"),
) -> None:
    """Delete all but the newest DeepSpeed checkpoints of an ended job (exports stay)."""
    api = connect(ctx)
    with api_errors(api.url):
        result = api.request("POST", f"/jobs/{job_id}/checkpoints/prune",
                             params={"keep": keep} if keep is not None else {}).json()
    console.print(f"job {job_id}: removed {', '.join(result['removed']) or 'nothing'} "
                  f"({size_text(result['freed_bytes'])} freed); "
                  f"kept {', '.join(result['kept']) or 'nothing'}")


def compare(ctx: typer.Context, job_ids: list[str] = typer.Argument(..., help="two or more jobs")) -> None:
    """Evaluation metrics of jobs side by side, with the lineage of each."""
    api = connect(ctx)
    results = {}
    with api_errors(api.url):
        for job_id in job_ids:
            job = api.get(f"/jobs/{job_id}")
            try:
                evaluation = api.get(f"/jobs/{job_id}/evaluation")
            except ApiError as exc:  # a job without results gets a column of "-"
                if exc.status != 404:
                    raise
                evaluation = {}
            results[job_id] = (job, evaluation)
    table = Table(box=None)
    table.add_column("metric", no_wrap=True)
    for job_id, (job, _) in results.items():
        table.add_column(f"{job['name']}\n{job_id}", justify="right", no_wrap=True)
    for key in ("task", "dataset", "split", "num_images"):
        table.add_row(key, *[str(ev.get(key, "-")) for _, ev in results.values()])
    names = list(dict.fromkeys(n for _, ev in results.values() for n in (ev.get("metrics") or {})))
    for name in names:
        values = [(ev.get("metrics") or {}).get(name) for _, ev in results.values()]
        table.add_row(name, *[f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)
                              for v in values])
    console.print(table)
    for job_id, (job, ev) in results.items():
        chain = [*(ev.get("parent_chain") or []), job_id] if ev else [*lineage(api, job), job_id]
        console.print(f"lineage of {job_id}: " + " → ".join(chain))
    if not names:
        fail("none of these jobs has evaluation results yet", code=2)


def lineage(api: Api, job: dict) -> list[str]:
    """The ancestors of a job, oldest first, by parent_id."""
    chain, parent = [], job.get("parent_id")
    while parent and len(chain) < 10:
        chain.insert(0, parent)
        parent = api.get(f"/jobs/{parent}").get("parent_id")
    return chain
