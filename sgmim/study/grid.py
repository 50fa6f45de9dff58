"""A study's grid: every (row, seed) becomes a cell holding its three job specs."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from sgmim.spec import SpecError, parse_spec
from sgmim.spec.job import SPEC_RULE
from sgmim.spec.study import METHODS, STAGES, StudySpec, job_key, set_key

# A placeholder parent so that a cell's child specs validate before their parent exists.
PLACEHOLDER_PARENT = "to-be-submitted"


@dataclass(frozen=True)
class Cell:
    id: str              # e.g. "sgmim-s1": the row's slug and the seed
    row: str             # the row's label
    seed: int
    jobs: dict[str, dict]  # stage → job spec (a child's parent is filled in at submit time)


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-") or "row"


def expand(study: StudySpec, bases: dict[str, dict]) -> list[Cell]:
    """Rows × seeds, each checked against the job schema now rather than at submit time."""
    cells, seen = [], set()
    for index, row in enumerate(study.rows()):
        row_slug = slug(row.label)
        if row_slug in seen:
            row_slug = f"{row_slug}-{index}"
        seen.add(row_slug)
        for seed in study.seeds:
            cell_id = f"{row_slug}-s{seed}"
            jobs = {stage: copy.deepcopy(bases[stage]) for stage in STAGES}
            for key, value in row.changes.items():
                stage, dotted = job_key(key)
                set_key(jobs[stage], dotted, METHODS[value] if key == "method" else value)
            for key in study.seed_keys:
                stage, dotted = key.split(".", 1)
                set_key(jobs[stage], dotted, seed)
            for stage in STAGES:
                jobs[stage]["name"] = f"{study.name}-{cell_id}-{stage}"[:128]
                jobs[stage].pop("parent", None)
                _validate(cell_id, stage, jobs[stage])
            cells.append(Cell(id=cell_id, row=row.label, seed=seed, jobs=jobs))
    return cells


def _validate(cell_id: str, stage: str, spec: dict) -> None:
    probe = copy.deepcopy(spec)
    if stage != "pretrain":
        probe["parent"] = {"job_id": PLACEHOLDER_PARENT}
    try:
        parse_spec(probe)
    except SpecError as exc:
        # the study's keys applied to a valid base job: a rule across the study's fields
        raise SpecError([(f"cell {cell_id} {stage}" + (f" {path}" if path else ""), msg)
                         for path, msg in exc.errors], [SPEC_RULE] * len(exc.errors)) from None
