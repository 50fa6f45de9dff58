"""Runs a study's cells through the REST API and remembers which job is which.

The API accepts a child only once its parent has succeeded, so the runner polls: it submits every
cell's pretraining job at once, then each cell's fine-tuning job when its pretraining succeeds,
then its evaluation. Every submit carries an idempotency key derived from the study, the cell, the
stage and the job body, so running a study again replays the jobs it already made instead of
duplicating them; the state file (`<out>/study-state.json`, cell → job ids) saves even those
calls. A changed base spec changes the body and so the key: that cell's stage is submitted anew.
A failed or cancelled job stops its cell; `retry` resumes that job and carries the chain on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sgmim.cli.client import Api
from sgmim.spec.study import STAGES
from sgmim.status import JobStatus
from sgmim.study.grid import Cell

STATE_FILE = "study-state.json"
STOPPED = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class CellProgress:
    stage: str    # the stage the cell is at (evaluate once it is done)
    status: str   # that stage's job status ("pending" before it is submitted)
    job_id: str | None

    @property
    def done(self) -> bool:
        return self.stage == STAGES[-1] and self.status == JobStatus.SUCCEEDED

    @property
    def stopped(self) -> bool:
        return self.status in STOPPED

    @property
    def settled(self) -> bool:
        return self.done or self.stopped


def idempotency_key(study: str, cell_id: str, stage: str, body: dict) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"sgmim-study/{study}/{cell_id}/{stage}/{digest[:32]}"


class StudyState:
    """`<out>/study-state.json`: the server it ran on and, per cell, its jobs (id, key, status)."""

    def __init__(self, out: Path, study: str, url: str):
        self.path = out / STATE_FILE
        self.data = {"study": study, "url": url, "cells": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def cell(self, cell: Cell) -> dict:
        return self.data["cells"].setdefault(cell.id, {"row": cell.row, "seed": cell.seed, "jobs": {}})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


class StudyRunner:
    def __init__(self, api: Api, study: str, cells: list[Cell], out: Path,
                 echo: Callable[[str], None] = print):
        self.api, self.study, self.cells, self.out, self.echo = api, study, cells, out, echo
        self.state = StudyState(out, study, api.url)
        self.created = 0  # jobs this runner made (not idempotent replays)

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

    def body(self, cell: Cell, stage: str, parent: str | None) -> dict:
        body = copy.deepcopy(cell.jobs[stage])
        if parent is not None:
            body["parent"] = {"job_id": parent}
        return body

    def advance(self, cell: Cell) -> CellProgress:
        """Submit what is due in this cell and report where it stands."""
        jobs = self.state.cell(cell)["jobs"]
        parent = None
        for index, stage in enumerate(STAGES):
            body = self.body(cell, stage, parent)
            key = idempotency_key(self.study, cell.id, stage, body)
            record = jobs.get(stage)
            if record is None or record["key"] != key:
                for later in STAGES[index:]:  # the spec changed: this stage and its children anew
                    self.cancel_outdated(cell, later, jobs.pop(later, None))
                response = self.api.request("POST", "/jobs", json=body, headers={"Idempotency-Key": key})
                job = response.json()
                record = jobs[stage] = {"id": job["id"], "key": key, "status": job["status"]}
                created = response.status_code == 201  # 200: the key replayed an earlier submit
                self.created += created
                self.echo(f"{cell.id}: {stage} job {job['id']} {job['status']}"
                          + ("" if created else " (submitted before)"))
                self.state.save()
            elif record["status"] != JobStatus.SUCCEEDED:
                status = self.api.get(f"/jobs/{record['id']}")["status"]
                if status != record["status"]:
                    record["status"] = status
                    self.echo(f"{cell.id}: {stage} job {record['id']} {status}")
                    self.state.save()
            if record["status"] != JobStatus.SUCCEEDED:
                return CellProgress(stage, record["status"], record["id"])
            parent = record["id"]
        return CellProgress(STAGES[-1], JobStatus.SUCCEEDED, parent)

    def cancel_outdated(self, cell: Cell, stage: str, record: dict | None) -> None:
        """A job of an earlier version of the study that has not ended yet is cancelled, so it
        does not take a worker for a result nobody reads."""
        if record is None or record["status"] in (*STOPPED, JobStatus.SUCCEEDED):
            return
        job = self.api.get(f"/jobs/{record['id']}")
        if job["status"] in (JobStatus.QUEUED, JobStatus.RUNNING):
            self.api.post(f"/jobs/{record['id']}/cancel")
            self.echo(f"{cell.id}: {stage} job {record['id']} cancelled (the study's spec changed)")

    def run(self, cells: Iterable[Cell] | None = None, poll_s: float = 2.0) -> dict[str, CellProgress]:
        """Advance the cells until each is done or stopped (failed / cancelled)."""
        cells = list(self.cells if cells is None else cells)
        while True:
            progress = {cell.id: self.advance(cell) for cell in cells}
            if all(p.settled for p in progress.values()):
                return progress
            time.sleep(poll_s)

    def resume_stopped(self, cells: Iterable[Cell]) -> list[Cell]:
        """Resume the failed or cancelled job of each of these cells; the cells resumed."""
        resumed = []
        for cell in cells:
            progress = self.advance(cell)
            if progress.stopped:
                job = self.api.post(f"/jobs/{progress.job_id}/resume")
                self.state.cell(cell)["jobs"][progress.stage]["status"] = job["status"]
                self.state.save()
                self.echo(f"{cell.id}: {progress.stage} job {progress.job_id} resumed ({job['status']})")
                resumed.append(cell)
        return resumed

    def peek(self, cell: Cell) -> CellProgress:
        """Where a cell stands, from the state file and the server; submits nothing."""
        jobs = self.state.data["cells"].get(cell.id, {}).get("jobs", {})
        for stage in STAGES:
            record = jobs.get(stage)
            if record is None:
                return CellProgress(stage, "pending", None)
            if record["status"] != JobStatus.SUCCEEDED:
                record["status"] = self.api.get(f"/jobs/{record['id']}")["status"]
            if record["status"] != JobStatus.SUCCEEDED:
                return CellProgress(stage, record["status"], record["id"])
        return CellProgress(STAGES[-1], JobStatus.SUCCEEDED, jobs[STAGES[-1]]["id"])

    def status(self) -> dict[str, dict]:
        """Per cell, every stage's job (id, status, progress) as the server has it now; no submits."""
        report = {}
        for cell in self.cells:
            recorded = self.state.data["cells"].get(cell.id, {}).get("jobs", {})
            stages = {}
            for stage in STAGES:
                record = recorded.get(stage)
                if record is None:
                    stages[stage] = {"id": None, "status": "pending", "progress": None}
                    continue
                job = self.api.get(f"/jobs/{record['id']}")
                stages[stage] = {"id": job["id"], "status": job["status"], "progress": job.get("progress"),
                                 "error": job.get("error")}
            report[cell.id] = {"row": cell.row, "seed": cell.seed, "stages": stages}
        return report
