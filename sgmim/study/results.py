"""A study's results: per metric and row the mean ± sample standard deviation over seeds, and the
difference to the baseline row with a 95 % confidence interval paired by seed (Student's t on the
per-seed differences). Written as Markdown, CSV, JSON and a PNG."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from sgmim.figures import colour_cycle, png_panels

# Direction of each known metric, for the arrows in the table headers.
LOWER_IS_BETTER = {"rmse", "abs_rel", "sq_rel", "log10", "rmse_log", "silog", "loss"}
CONFIDENCE = 0.95


@dataclass(frozen=True)
class RowStats:
    row: str
    n: int
    mean: float
    std: float            # sample standard deviation (ddof 1); nan with one seed
    values: dict[int, float]  # seed → value
    diff: float           # mean of (row − baseline) over the seeds both have; 0 for the baseline
    ci_low: float
    ci_high: float
    n_pairs: int


def row_stats(row: str, values: dict[int, float], baseline: dict[int, float]) -> RowStats:
    from scipy import stats

    xs = [values[s] for s in sorted(values)]
    n = len(xs)
    mean = sum(xs) / n if n else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    seeds = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in seeds]
    k = len(diffs)
    diff = sum(diffs) / k if k else math.nan
    low = high = math.nan
    if k > 1:
        sd = math.sqrt(sum((d - diff) ** 2 for d in diffs) / (k - 1))
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, k - 1) * sd / math.sqrt(k)
        low, high = diff - half, diff + half
    return RowStats(row, n, mean, std, dict(sorted(values.items())), diff, low, high, k)


def tabulate(rows: list[str], baseline: str, metrics: list[str],
             evaluations: dict[str, dict[int, dict]]) -> dict[str, list[RowStats]]:
    """evaluations: row → seed → the evaluation's metrics. Returns metric → one RowStats per row."""
    tables = {}
    for metric in metrics:
        per_row = {row: {seed: float(m[metric]) for seed, m in evaluations.get(row, {}).items()
                         if isinstance(m.get(metric), int | float)} for row in rows}
        tables[metric] = [row_stats(row, per_row[row], per_row[baseline]) for row in rows]
    return tables


def _num(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"


def _arrow(metric: str) -> str:
    return "↓" if metric in LOWER_IS_BETTER else "↑"


def markdown(study: str, baseline: str, tables: dict[str, list[RowStats]]) -> str:
    lines = [f"# Study {study}", "",
             f"Mean ± sample standard deviation over seeds (n = seeds); Δ = row − {baseline!r}, paired "
             f"by seed, with its {CONFIDENCE:.0%} confidence interval (Student's t, n_pairs − 1 dof).", ""]
    for metric, stats in tables.items():
        lines += [f"## {metric} {_arrow(metric)}", "",
                  "| row | mean ± std | n | Δ vs baseline | 95% CI of Δ |", "|---|---|---|---|---|"]
        for s in stats:
            delta = "baseline" if s.row == baseline else _num(s.diff)
            ci = "" if s.row == baseline else f"[{_num(s.ci_low)}, {_num(s.ci_high)}]"
            lines.append(f"| {s.row} | {_num(s.mean)} ± {_num(s.std)} | {s.n} | {delta} | {ci} |")
        lines.append("")
    return "\n".join(lines)


def to_csv(tables: dict[str, list[RowStats]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "row", "n", "mean", "std", "diff", "ci_low", "ci_high", "n_pairs"])
    for metric, stats in tables.items():
        for s in stats:
            writer.writerow([metric, s.row, s.n, s.mean, s.std, s.diff, s.ci_low, s.ci_high, s.n_pairs])
    return out.getvalue()


def to_json(study: str, baseline: str, tables: dict[str, list[RowStats]], cells: dict) -> str:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        return value

    body = {"study": study, "baseline": baseline, "confidence": CONFIDENCE,
            "metrics": {m: [{k: clean(v) for k, v in asdict(s).items()} for s in stats]
                        for m, stats in tables.items()},
            "cells": cells}
    return json.dumps(body, indent=2) + "\n"


def plot(tables: dict[str, list[RowStats]], curves: dict[str, list[list[tuple[int, float]]]],
         output: Path) -> None:
    """One bar chart per metric (mean, error bar = std, seeds as dots) and the pretraining loss
    curves (one line per cell, one colour per row)."""
    colours = colour_cycle()
    with png_panels(output, len(tables) + 1, (4.2, 4.2)) as axes:
        for ax, (metric, stats) in zip(axes, tables.items(), strict=False):
            xs = range(len(stats))
            means = [s.mean if math.isfinite(s.mean) else 0.0 for s in stats]
            errors = [s.std if math.isfinite(s.std) else 0.0 for s in stats]
            ax.bar(xs, means, yerr=errors, capsize=4, color=[colours[i % len(colours)] for i in xs],
                   alpha=0.7)
            for i, s in enumerate(stats):
                ax.plot([i] * len(s.values), list(s.values.values()), "k.", markersize=5)
            ax.set_xticks(list(xs), [s.row for s in stats], rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{metric} {_arrow(metric)}")
            ax.grid(axis="y", alpha=0.3)
        ax = axes[-1]
        for i, (row, runs) in enumerate(curves.items()):
            for j, points in enumerate(runs):
                if points:
                    steps, values = zip(*points, strict=True)
                    ax.plot(steps, values, color=colours[i % len(colours)], alpha=0.8,
                            label=row if j == 0 else None)
        ax.set(title="pretraining loss", xlabel="step")
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
