"""Studies run by the service (/api/v1/studies): a posted study is stored (table `studies`) and
advanced by the API itself, so it needs no client to stay connected and survives a restart.

The grid is sgmim.study.grid's and the chain logic sgmim.study.chains' (an idempotency key per
cell, stage and job body, so posting a study again replays the jobs it made). What this module
adds is how the chains reach the jobs (the job repository, with the checks of POST /jobs) and
when they advance: in the POST, on a retry, and every `study_interval_s` for every active study
(`advance_active`, a loop in the API's lifespan); and how a study ends early: `cancel` (stored as
`cancelled_at`; its jobs in flight cancelled; nothing submitted for it until a retry, only its
jobs' statuses refreshed until none is in flight) and `delete`.

Every API process runs that loop. What keeps a cancel from being undone by a pass of another
process that read the study before it: each job the pass submits or resumes is stored as queued
(claimable) only by a transaction that finds the study not cancelled and keeps it so until it
commits (`hold_study_open`: a share lock on the study's row on Postgres, which the cancel's
UPDATE waits for; SQLite's one writer), and the job's wake-up message is sent only after that
commit. So no job of a cancelled study ever becomes claimable: a cancel that lands first makes
the pass's next submit or resume refuse (StudyCancelled) and the pass stop. A job stored before
the cancel is in flight like any other, but the cancel, reading the records, cannot see it: the
pass saves its records only if the study is still not cancelled (a conditional UPDATE), and when
that save or its next submit finds the cancel, it cancels the jobs it submitted or resumed.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from service import artifacts
from service.broker import Broker, Dispatcher, dispatch
from service.db.errors import InvalidTransition, StudyCancelled
from service.db.models import Job, Study
from service.db.repo import JobRepo
from service.errors import StudyInFlight, StudyInvalid, UnknownCells
from service.settings import Settings
from service.submission import submit_spec
from service.texts import check_strings
from sgmim.spec import SpecError, parse_spec
from sgmim.spec.job import SPEC_RULE
from sgmim.spec.paths import paths_outside
from sgmim.spec.study import STAGES, StudySpec, parse_study
from sgmim.status import JobStatus
from sgmim.study import results
from sgmim.study.chains import CellProgress, Chains
from sgmim.study.grid import PLACEHOLDER_PARENT, Cell, expand

log = logging.getLogger("service.studies")

# "cell <id> <stage> <field path>": how sgmim.study.grid names an error inside one cell's job
_CELL_ERROR = re.compile(r"^cell (\S+) (pretrain|finetune|evaluate)(?: (.*))?$")


@dataclass(frozen=True)
class Loaded:
    spec: StudySpec
    cells: list[Cell]


def _loc(path: str) -> list[str | int]:
    match = _CELL_ERROR.match(path)
    if match:
        cell, stage, rest = match.groups()
        return ["body", "cells", cell, stage, *_parts(rest or "")]
    return ["body", *_parts(path)]


def _parts(path: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in path.split(".") if p]


def load(data: Any, settings: Settings) -> Loaded:
    """A posted study, validated: its own schema, then each cell's three jobs against the job
    schema and the server's data roots (so nothing is stored that could not be submitted)."""
    check_strings(data, settings.max_string_length)
    try:
        spec, bases = parse_study(data, None)
        cells = expand(spec, bases)
    except SpecError as exc:
        kinds = [SPEC_RULE if kind == "value_error" else kind for kind in exc.types]
        raise StudyInvalid([{"loc": _loc(path), "msg": msg, "type": kind}
                            for (path, msg), kind in zip(exc.errors, kinds, strict=True)]) from None
    if len(cells) > settings.max_study_cells:
        raise StudyInvalid([{"loc": ["body"], "type": SPEC_RULE,
                             "msg": f"the study has {len(cells)} cells (rows × seeds); this server takes "
                                    f"at most {settings.max_study_cells} (SGMIM_MAX_STUDY_CELLS)"}])
    outside = []
    for cell in cells:
        for stage, job in cell.jobs.items():
            probe = {**job, "parent": {"job_id": PLACEHOLDER_PARENT}} if stage != "pretrain" else job
            for path, msg in paths_outside(parse_spec(probe), settings.allowed_data_roots(), resolve=False):
                outside.append({"loc": ["body", "cells", cell.id, stage, *_parts(path)], "msg": msg,
                                "type": "path_not_allowed"})
    if outside:
        raise StudyInvalid(outside)
    return Loaded(spec, cells)


def _in_flight(jobs: Iterable[Job]) -> list[Job]:
    return [job for job in jobs if not JobStatus(job.status).terminal]


class ServiceChains(Chains):
    """A study's chains reaching the jobs through the repository, with POST /jobs' checks."""

    def __init__(self, studies: Studies, name: str, cells: list[Cell], records: dict):
        super().__init__(name, cells, records, echo=lambda line: log.info("study %s: %s", name, line))
        self.studies = studies
        self.started: list[str] = []  # jobs this pass submitted or resumed

    def submit(self, body: dict, key: str) -> tuple[str, str, bool]:
        s = self.studies
        result = submit_spec(body, key, s.repo, s.broker, s.settings, study=self.study)
        self.started.append(result.job.id)
        if result.created:
            s.dispatcher.poke()
        return result.job.id, result.job.status, result.created

    def job_status(self, job_id: str) -> str:
        return self.studies.repo.get(job_id).status

    def cancel(self, job_id: str) -> None:
        self.studies.repo.cancel(job_id)

    def resume(self, job_id: str) -> str:
        job = self.studies.repo.resume(job_id, study=self.study)
        self.started.append(job_id)
        dispatch(self.studies.repo, self.studies.broker, job)
        return job.status


@dataclass(frozen=True)
class Advanced:
    study: Study
    submitted: int  # jobs created by this call (not idempotent replays)
    progress: dict[str, CellProgress]


class Studies:
    """The service's studies; one per app (`app.state.studies`). Blocking methods: call them from
    a worker thread. One lock per process serialises advancing, so two passes never race over a
    study's records; across processes the idempotency keys make a second submit a replay, and a
    cancel holds as the module says."""

    def __init__(self, repo: JobRepo, broker: Broker, dispatcher: Dispatcher, settings: Settings):
        self.repo, self.broker, self.dispatcher, self.settings = repo, broker, dispatcher, settings
        self.lock = threading.Lock()
        self.loaded: dict[str, tuple[str, Loaded]] = {}  # name → (its spec as JSON, expanded)

    def post(self, data: Any) -> tuple[Advanced, bool]:
        """Store (or update) the study and submit what is due now: (advanced, study created)."""
        loaded = load(data, self.settings)
        _, created = self.repo.put_study(loaded.spec.name, data)
        return self.advance(loaded.spec.name), created

    def cells_of(self, study: Study) -> Loaded:
        """The study's spec and cells; expanded once per version of its spec (every pass and
        page needs them, and expanding validates every cell's jobs)."""
        key = json.dumps(study.spec, sort_keys=True)
        cached = self.loaded.get(study.name)
        if cached is None or cached[0] != key:
            spec, bases = parse_study(study.spec, None)
            cached = self.loaded[study.name] = (key, Loaded(spec, expand(spec, bases)))
        return cached[1]

    def advance(self, name: str, retry: list[str] | None = None, only_active: bool = False) -> Advanced:
        """Submit each cell's due job; with `retry`, clear the cancel and resume those cells'
        failed or cancelled job first ([] for every stopped cell). `only_active`: leave it alone if
        it is not active (the background pass: it may have settled since it was listed). A
        cancelled study only has its records refreshed."""
        with self.lock:
            if retry is not None:
                self._chosen(name, self.cells_of(self.repo.study(name)).cells, retry)  # before any change
                self.repo.resume_study(name)
            study = self.repo.study(name)
            if only_active and not study.active:
                return Advanced(study, 0, {})
            if study.cancelled_at is not None:
                return Advanced(self._refresh(study), 0, {})
            loaded = self.cells_of(study)
            chains = ServiceChains(self, name, loaded.cells, copy.deepcopy(study.cells))
            try:
                if retry is not None:
                    chains.resume_stopped(self._chosen(name, loaded.cells, retry))
                progress = {cell.id: chains.advance(cell) for cell in loaded.cells}
            except StudyCancelled:  # the pass stops: nothing more is submitted or resumed
                saved = False
            else:
                active = not all(p.settled for p in progress.values())
                saved = self.repo.save_study_cells(name, chains.records, active, cancelled_at=None)
            if not saved:
                self._withdraw(name, chains.started)
                return Advanced(self.repo.study(name), 0, {})
            return Advanced(self.repo.study(name), chains.created, progress)

    def _withdraw(self, name: str, job_ids: list[str]) -> None:
        """A pass that found the study cancelled under it cancels the jobs it submitted or resumed:
        they are not in the records the cancel read."""
        for job_id in job_ids:
            try:
                self.repo.cancel(job_id)
            except InvalidTransition:  # it had ended (a replayed job that succeeded long ago)
                continue
        log.info("study %s was cancelled (or deleted) during a pass: its %d job(s) cancelled",
                 name, len(job_ids))

    def _refresh(self, study: Study) -> Study:
        """A cancelled study's pass: its records get their jobs' statuses (nothing is submitted),
        and it stays active, read by the background pass, while one of its jobs is in flight."""
        jobs = self.cell_jobs(study)
        records = copy.deepcopy(study.cells)
        for record in (r for cell in records.values() for r in cell["jobs"].values()):
            if record["id"] in jobs:
                record["status"] = jobs[record["id"]].status
        in_flight = bool(_in_flight(jobs.values()))
        if records != study.cells or in_flight != study.active:
            self.repo.save_study_cells(study.name, records, in_flight, study.cancelled_at)
        return self.repo.study(study.name)

    def _chosen(self, name: str, cells: list[Cell], wanted: list[str]) -> list[Cell]:
        known = {cell.id: cell for cell in cells}
        unknown = [c for c in wanted if c not in known]
        if unknown:
            raise UnknownCells(name, unknown, list(known))
        return [known[c] for c in wanted] if wanted else cells

    def advance_active(self) -> None:
        """One background pass: advance every active study; one failing study does not stop the others."""
        for name in self.repo.active_study_names():
            try:
                self.advance(name, only_active=True)
            except Exception:
                log.exception("advancing study %s failed", name)

    def cancel(self, name: str) -> Study:
        """Store the cancel, then cancel every job of the study's cells still queued or running;
        the cells stop where they are and a retry resumes them. A finished study (inactive, not
        cancelled, nothing in flight) is left as it is; one cancelled already keeps its time."""
        with self.lock:
            study = self.repo.study(name)
            if study.cancelled_at is None and not study.active and not self._in_flight(study):
                return study
            cancelled_at = self.repo.cancel_study(name)
            # the records as of the cancel: a pass that saves after it is refused and withdraws its jobs
            study = self.repo.study(name)
            if study.cancelled_at != cancelled_at:  # a retry came in between: the later request wins
                return study
            cancelled = 0
            for job in self._in_flight(study):
                try:
                    self.repo.cancel(job.id)
                except InvalidTransition:  # it ended since it was read
                    continue
                cancelled += job.status != JobStatus.CANCELLING
            if cancelled:
                log.info("study %s cancelled (%d job(s) cancelled)", name, cancelled)
            return self._refresh(study)

    def _in_flight(self, study: Study) -> list[Job]:
        return _in_flight(self.cell_jobs(study).values())

    def delete(self, name: str) -> None:
        """Forget the study (its jobs stay); refused while one of its jobs has not ended."""
        with self.lock:
            study = self.repo.study(name)
            in_flight = sorted(self._in_flight(study), key=lambda j: j.id)
            if in_flight:
                raise StudyInFlight(name, in_flight[0].id, in_flight[0].status)
            self.repo.delete_study(name)
            self.loaded.pop(name, None)

    # --- reading --------------------------------------------------------------------------------

    def cell_jobs(self, study: Study, evaluation: bool = False) -> dict[str, Job]:
        ids = [job["id"] for cell in study.cells.values() for job in cell["jobs"].values()]
        return self.repo.job_rows(ids, evaluation=evaluation)

    def evaluation(self, job: Job) -> dict[str, Any] | None:
        return job.evaluation if job.evaluation is not None else artifacts.eval_file(
            self.settings.run_dir(job.id))

    def tables(self, study: Study) -> tuple[StudySpec, dict[str, list[results.RowStats]], dict]:
        """The table per metric over the done cells, and per cell its record with its metrics."""
        loaded = self.cells_of(study)
        jobs = self.cell_jobs(study, evaluation=True)
        evaluations: dict[str, dict[int, dict]] = {}
        cell_records = {}
        for cell in loaded.cells:
            stages = study.cells.get(cell.id, {}).get("jobs", {})
            record: dict[str, Any] = {"row": cell.row, "seed": cell.seed,
                                      "jobs": {stage: job["id"] for stage, job in stages.items()}}
            last = jobs.get(stages.get(STAGES[-1], {}).get("id", ""))
            if last is not None and last.status == JobStatus.SUCCEEDED:
                metrics = (self.evaluation(last) or {}).get("metrics") or {}
                evaluations.setdefault(cell.row, {})[cell.seed] = metrics
                record["metrics"] = metrics
            cell_records[cell.id] = record
        spec = loaded.spec
        rows = [row.label for row in spec.rows()]
        return spec, results.tabulate(rows, spec.baseline_label(), spec.metrics, evaluations), cell_records
