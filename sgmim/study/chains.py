"""Advancing a study's cells: one pretrain → fine-tune → evaluate chain per cell, whoever submits.

The service accepts a child only once its parent has succeeded, so a cell advances one stage at a
time: each pass submits the stage that is due and reads the status of the one in flight. Every
submit carries an idempotency key derived from the study, the cell, the stage and the job body, so
advancing a study again replays the jobs it already made instead of duplicating them; the records
(cell id → stage → {id, key, status}) save even those calls. A changed base spec changes the body
and so the key: that stage is submitted anew and its outdated jobs still in flight are cancelled.
A failed or cancelled job stops its cell; `resume_stopped` resumes that job and the chain goes on.

`Chains` holds this logic; how a job is submitted, read, cancelled and resumed is left to a
subclass: the service's (service/studies.py) reaches the jobs through its job repository. The
records are the service's too (its `studies` table); `sgmim study` follows them over the API.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sgmim.spec.study import STAGES
from sgmim.status import JobStatus
from sgmim.study.grid import Cell

STOPPED = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
PENDING = "pending"  # a stage not submitted yet


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


class Chains:
    """The cells of one study and their job records; subclasses say how jobs are reached."""

    def __init__(self, study: str, cells: list[Cell], records: dict,
                 echo: Callable[[str], None] = print):
        """records: cell id → {row, seed, jobs: stage → {id, key, status}}, updated in place."""
        self.study, self.cells, self.records, self.echo = study, cells, records, echo
        self.created = 0  # jobs made by this object (not idempotent replays)

    # --- how jobs are reached ------------------------------------------------------------------

    def submit(self, body: dict, key: str) -> tuple[str, str, bool]:
        """Submit with an idempotency key: (job id, status, created)."""
        raise NotImplementedError

    def job_status(self, job_id: str) -> str:
        raise NotImplementedError

    def cancel(self, job_id: str) -> None:
        raise NotImplementedError

    def resume(self, job_id: str) -> str:
        """Resume a failed or cancelled job; its new status."""
        raise NotImplementedError

    # --- the chain logic ------------------------------------------------------------------------

    def cell_record(self, cell: Cell) -> dict:
        return self.records.setdefault(cell.id, {"row": cell.row, "seed": cell.seed, "jobs": {}})

    def body(self, cell: Cell, stage: str, parent: str | None) -> dict:
        body = copy.deepcopy(cell.jobs[stage])
        if parent is not None:
            body["parent"] = {"job_id": parent}
        return body

    def advance(self, cell: Cell) -> CellProgress:
        """Submit what is due in this cell and report where it stands."""
        jobs = self.cell_record(cell)["jobs"]
        parent = None
        for index, stage in enumerate(STAGES):
            body = self.body(cell, stage, parent)
            key = idempotency_key(self.study, cell.id, stage, body)
            record = jobs.get(stage)
            if record is None or record["key"] != key:
                for later in STAGES[index:]:  # the spec changed: this stage and its children anew
                    self.cancel_outdated(cell, later, jobs.pop(later, None))
                job_id, status, created = self.submit(body, key)
                record = jobs[stage] = {"id": job_id, "key": key, "status": status}
                self.created += created
                replayed = "" if created else " (submitted before)"
                self.echo(f"{cell.id}: {stage} job {job_id} {status}{replayed}")
            elif record["status"] != JobStatus.SUCCEEDED:
                status = self.job_status(record["id"])
                if status != record["status"]:
                    record["status"] = status
                    self.echo(f"{cell.id}: {stage} job {record['id']} {status}")
            if record["status"] != JobStatus.SUCCEEDED:
                return CellProgress(stage, record["status"], record["id"])
            parent = record["id"]
        return CellProgress(STAGES[-1], JobStatus.SUCCEEDED, parent)

    def cancel_outdated(self, cell: Cell, stage: str, record: dict | None) -> None:
        """A job of an earlier version of the study that has not ended yet is cancelled, so it
        does not take a worker for a result nobody reads."""
        if record is None or record["status"] in (*STOPPED, JobStatus.SUCCEEDED):
            return
        if self.job_status(record["id"]) in (JobStatus.QUEUED, JobStatus.RUNNING):
            self.cancel(record["id"])
            self.echo(f"{cell.id}: {stage} job {record['id']} cancelled (the study's spec changed)")

    def resume_stopped(self, cells: Iterable[Cell]) -> list[Cell]:
        """Resume the failed or cancelled job of each of these cells; the cells resumed."""
        resumed = []
        for cell in cells:
            progress = self.advance(cell)
            if progress.stopped:
                status = self.resume(progress.job_id)
                self.cell_record(cell)["jobs"][progress.stage]["status"] = status
                self.echo(f"{cell.id}: {progress.stage} job {progress.job_id} resumed ({status})")
                resumed.append(cell)
        return resumed
