"""Runs a study's cells through the REST API (`sgmim study run`) and remembers which job is which.

The chain logic (what is due, idempotency keys per cell, a changed spec, resuming) is
sgmim.study.chains, shared with the service's /api/v1/studies; this module reaches the jobs over
HTTP and keeps the records in `<out>/study-state.json` (cell → job ids) with the server's URL.
It polls: the API accepts a child only once its parent has succeeded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sgmim.cli.client import Api
from sgmim.spec.study import STAGES
from sgmim.study.chains import PENDING, CellProgress, Chains, idempotency_key
from sgmim.study.grid import Cell

__all__ = ["STATE_FILE", "CellProgress", "StudyRunner", "StudyState", "idempotency_key"]

STATE_FILE = "study-state.json"


class StudyState:
    """`<out>/study-state.json`: the server it ran on and, per cell, its jobs (id, key, status)."""

    def __init__(self, out: Path, study: str, url: str):
        self.path = out / STATE_FILE
        self.data = {"study": study, "url": url, "cells": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


class StudyRunner(Chains):
    def __init__(self, api: Api, study: str, cells: list[Cell], out: Path,
                 echo: Callable[[str], None] = print):
        self.api, self.out = api, out
        self.state = StudyState(out, study, api.url)
        super().__init__(study, cells, self.state.data["cells"], echo)

    def submit(self, body: dict, key: str) -> tuple[str, str, bool]:
        response = self.api.request("POST", "/jobs", json=body, headers={"Idempotency-Key": key})
        job = response.json()
        return job["id"], job["status"], response.status_code == 201  # 200: a replay

    def job_status(self, job_id: str) -> str:
        return self.api.get(f"/jobs/{job_id}")["status"]

    def cancel(self, job_id: str) -> None:
        self.api.post(f"/jobs/{job_id}/cancel")

    def resume(self, job_id: str) -> str:
        return self.api.post(f"/jobs/{job_id}/resume")["status"]

    def save(self) -> None:
        self.state.save()

    def check_server(self) -> str | None:
        """Why this state file cannot be used with this server (None when it can)."""
        if self.state.data.get("study") != self.study:
            return (f"{self.state.path} belongs to study {self.state.data.get('study')!r}, not "
                    f"{self.study!r}; give another --out")
        recorded = self.state.data.get("url")
        if recorded != self.api.url and any(c["jobs"] for c in self.state.data["cells"].values()):
            return (f"{self.state.path} records jobs on {recorded}; connect there (--url {recorded}) "
                    "or give another --out")
        return None

    def run(self, cells: Iterable[Cell] | None = None, poll_s: float = 2.0) -> dict[str, CellProgress]:
        """Advance the cells until each is done or stopped (failed / cancelled)."""
        cells = list(self.cells if cells is None else cells)
        while True:
            progress = {cell.id: self.advance(cell) for cell in cells}
            if all(p.settled for p in progress.values()):
                return progress
            time.sleep(poll_s)

    def status(self) -> dict[str, dict]:
        """Per cell, every stage's job (id, status, progress) as the server has it now; no submits."""
        report = {}
        for cell in self.cells:
            recorded = self.records.get(cell.id, {}).get("jobs", {})
            stages = {}
            for stage in STAGES:
                record = recorded.get(stage)
                if record is None:
                    stages[stage] = {"id": None, "status": PENDING, "progress": None}
                    continue
                job = self.api.get(f"/jobs/{record['id']}")
                stages[stage] = {"id": job["id"], "status": job["status"], "progress": job.get("progress"),
                                 "error": job.get("error")}
            report[cell.id] = {"row": cell.row, "seed": cell.seed, "stages": stages}
        return report
