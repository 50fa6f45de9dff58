"""A study the service runs, seen from a client: follow its cells until they settle, then write its
results locally: `results.{md,csv,json}` as the service computes them, `results.png` (the table's
bars and the pretraining curves) and `cells/<cell>/eval.json`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgmim.cli.client import Api
from sgmim.cli.plot import fetch_series
from sgmim.spec.study import STAGES
from sgmim.status import JobStatus
from sgmim.study import results
from sgmim.study.chains import STOPPED

IN_FLIGHT = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})


def done(cell: dict) -> bool:
    return cell["stage"] == STAGES[-1] and cell["status"] == JobStatus.SUCCEEDED


def stopped(cell: dict) -> bool:
    return cell["status"] in STOPPED


def settled(study: dict) -> bool:
    """Nothing more happens to it without a request: every cell is done or stopped, or the service
    no longer advances it (cancelled) and none of its jobs is in flight."""
    cells = study["cells"]
    if all(done(c) or stopped(c) for c in cells):
        return True
    return not study["active"] and not any(c["status"] in IN_FLIGHT for c in cells)


def follow(api: Api, name: str, poll_s: float, echo: Callable[[str], None]) -> dict:
    """Poll GET /studies/{name} until the study settles (an API restart is waited out); echo a
    line whenever a cell moves to another stage or status. The study as last read."""
    seen: dict[str, tuple[str, str]] = {}
    while True:
        study = api.retrying(lambda: api.get(f"/studies/{name}"))
        for cell in study["cells"]:
            where = (cell["stage"], cell["status"])
            if seen.get(cell["id"]) != where:
                seen[cell["id"]] = where
                job = cell["stages"][cell["stage"]]["job_id"]
                what = f"job {job} {cell['status']}" if job else "pending"
                echo(f"{cell['id']}: {cell['stage']} {what}")
        if settled(study):
            return study
        time.sleep(poll_s)


@dataclass(frozen=True)
class Written:
    files: list[Path]
    markdown: str


def tables_of(data: dict[str, Any]) -> dict[str, list[results.RowStats]]:
    """The tables of GET /studies/{name}/results (null for an undefined statistic) as RowStats."""
    def number(value: float | None) -> float:
        return float("nan") if value is None else value

    return {metric: [results.RowStats(
        row=r["row"], n=r["n"], mean=number(r["mean"]), std=number(r["std"]),
        values={int(seed): v for seed, v in r["values"].items()}, diff=number(r["diff"]),
        ci_low=number(r["ci_low"]), ci_high=number(r["ci_high"]), n_pairs=r["n_pairs"]) for r in rows]
        for metric, rows in data["metrics"].items()}


def write_results(api: Api, study: dict, out: Path) -> Written:
    """study: GET /studies/{name}. The results over its done cells, and each done cell's evaluation."""
    name = study["name"]
    data = api.get(f"/studies/{name}/results")
    markdown = api.request("GET", f"/studies/{name}/results.md").text
    curves: dict[str, list] = {}
    for cell in study["cells"]:
        pretrain = cell["stages"]["pretrain"]["job_id"]
        if pretrain is not None:
            curves.setdefault(cell["row"], []).append(fetch_series(api, pretrain, ["loss"]).get("loss", []))
        if done(cell):
            evaluation = api.get(f"/jobs/{cell['stages'][STAGES[-1]]['job_id']}/evaluation")
            folder = out / "cells" / cell["id"]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    files = [out / f"results.{suffix}" for suffix in ("md", "csv", "json", "png")]
    out.mkdir(parents=True, exist_ok=True)
    files[0].write_text(markdown)
    files[1].write_text(api.request("GET", f"/studies/{name}/results.csv").text)
    files[2].write_text(json.dumps(data, indent=2) + "\n")
    results.plot(tables_of(data), curves, files[3])
    return Written(files, markdown)
