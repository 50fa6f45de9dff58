"""Fetch the finished cells' evaluations and pretraining curves and write the study's results:
`results.{md,csv,json,png}` and `cells/<cell>/eval.json`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sgmim.cli.client import Api
from sgmim.cli.plot import fetch_series
from sgmim.spec.study import StudySpec
from sgmim.study import results
from sgmim.study.chains import CellProgress
from sgmim.study.grid import Cell


@dataclass(frozen=True)
class Written:
    tables: dict[str, list[results.RowStats]]
    files: list[Path]
    markdown: str


def write_results(api: Api, study: StudySpec, cells: list[Cell], progress: dict[str, CellProgress],
                  jobs: dict[str, dict], out: Path) -> Written:
    """progress: cell id → where it stands; jobs: cell id → stage → {id, ...} (the state file's)."""
    evaluations: dict[str, dict[int, dict]] = {}
    curves: dict[str, list] = {}
    cell_records = {}
    for cell in cells:
        record = {"row": cell.row, "seed": cell.seed, "status": progress[cell.id].status,
                  "stage": progress[cell.id].stage,
                  "jobs": {stage: job["id"] for stage, job in jobs.get(cell.id, {}).items()}}
        pretrain = jobs.get(cell.id, {}).get("pretrain")
        if pretrain is not None:
            series = fetch_series(api, pretrain["id"], ["loss"]).get("loss", [])
            curves.setdefault(cell.row, []).append(series)
        if progress[cell.id].done:
            evaluation = api.get(f"/jobs/{progress[cell.id].job_id}/evaluation")
            folder = out / "cells" / cell.id
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
            evaluations.setdefault(cell.row, {})[cell.seed] = evaluation.get("metrics") or {}
            record["metrics"] = evaluation.get("metrics")
        cell_records[cell.id] = record
    rows = [row.label for row in study.rows()]
    baseline = study.baseline_label()
    tables = results.tabulate(rows, baseline, study.metrics, evaluations)
    text = results.markdown(study.name, baseline, tables)
    files = [out / f"results.{suffix}" for suffix in ("md", "csv", "json", "png")]
    files[0].write_text(text)
    files[1].write_text(results.to_csv(tables))
    files[2].write_text(results.to_json(study.name, baseline, tables, cell_records))
    results.plot(tables, curves, files[3])
    return Written(tables, files, text)
