"""`sgmim plot`: loss and LR curves of one or more jobs to a PNG (two ids overlay them)."""

from __future__ import annotations

from pathlib import Path

import typer

from sgmim.cli.client import Api, api_errors, fail
from sgmim.cli.jobs import connect, console
from sgmim.figures import png_panels

DEFAULT_METRICS = ["loss", "loss_img", "loss_struct"]


def fetch_series(api: Api, job_id: str, names: list[str]) -> dict[str, list[tuple[int, float]]]:
    """Every point of the named metrics, page by page; a step logged twice (a resumed attempt
    re-running steps after its checkpoint) keeps its latest value."""
    series: dict[str, dict[int, float]] = {n: {} for n in names}
    after = 0
    while True:
        page = api.get(f"/jobs/{job_id}/metrics", names=",".join(names), after=after, limit=10_000)
        for point in page["items"]:
            if point["value"] is not None and point["step"] is not None:
                series[point["name"]][point["step"]] = point["value"]
        if page.get("next_after") is None:
            break
        after = page["next_after"]
    return {n: sorted(points.items()) for n, points in series.items() if points}


def render(curves: dict[str, dict[str, list[tuple[int, float]]]], output: Path) -> None:
    """curves: job label → metric name → [(step, value)]. Losses on the left, LR on the right."""
    with png_panels(output, 2, (6, 4.5)) as (ax_loss, ax_lr):
        for label, series in curves.items():
            for name, points in series.items():
                steps, values = zip(*points, strict=True)
                ax = ax_lr if name == "lr" else ax_loss
                ax.plot(steps, values, label=f"{label} {name}" if len(curves) > 1 else name)
        ax_loss.set(title="losses", xlabel="step")
        ax_lr.set(title="learning rate", xlabel="step")
        for ax in (ax_loss, ax_lr):
            if ax.lines:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)


def plot(
    ctx: typer.Context,
    job_ids: list[str] = typer.Argument(..., help="one job id, or several to overlay (SG-MIM vs SimMIM)"),
    output: Path = typer.Option(Path("metrics.png"), "-o", "--output"),
    metrics: list[str] = typer.Option([], "--metric", help=f"metric names (repeatable; default "
                                      f"{', '.join(DEFAULT_METRICS)}); lr is always drawn"),
) -> None:
    """Render the loss and learning-rate curves of jobs to a PNG."""
    api = connect(ctx)
    curves, known = {}, set()
    with api_errors(api.url):
        for job_id in job_ids:
            job = api.get(f"/jobs/{job_id}")
            known.update(job.get("last_metrics") or {})
            names = [*(metrics or DEFAULT_METRICS), "lr"]
            curves[f"{job['name']} ({job_id})"] = fetch_series(api, job_id, names)
    missing = [m for m in metrics if not any(m in series for series in curves.values())]
    if missing:
        fail(f"no metric {', '.join(map(repr, missing))} in " + ", ".join(job_ids)
             + (f"; they have: {', '.join(sorted(known))}" if known else ""), code=2)
    if not any(curves.values()):
        fail("no metric points yet for " + ", ".join(job_ids))
    render(curves, output)
    console.print(f"wrote {output}")
