"""What a job produced, as the worker records it: checkpoints (DeepSpeed tags and exports)
and evaluation results."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy import delete, select, update

from service.db.base import RepoBase, json_safe
from service.db.errors import JobNotFound
from service.db.models import Checkpoint, Job, utcnow

CHECKPOINT_KINDS = ("deepspeed", "encoder", "model")  # model: a fine-tuning export (encoder + head)
_CHECKPOINT_NAME = re.compile(r"[A-Za-z0-9._-]{1,256}")  # global_step100, encoder, ...


class RecordRepo(RepoBase):
    """Checkpoint and evaluation records of a job."""

    def record_checkpoint(
        self, job_id: str, name: str, kind: str, step: int | None, size_bytes: int, path: str
    ) -> None:
        """Record (or update) a checkpoint; `path` is relative to the run directory, e.g.
        "checkpoints/global_step100" (deepspeed: the tag folder) or "export/encoder.safetensors"."""
        if kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, not {kind!r}")
        if not _CHECKPOINT_NAME.fullmatch(name) or name in (".", ".."):
            raise ValueError(f"bad checkpoint name {name!r}: use letters, digits, '.', '_' and '-'")
        rel = PurePosixPath(path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or os.path.isabs(path):
            raise ValueError(f"checkpoint path must be relative to the run directory: {path!r}")
        with self.db.write() as s:
            self._require(s, job_id)
            row = s.get(Checkpoint, (job_id, name))
            if row is None:
                s.add(
                    Checkpoint(
                        job_id=job_id,
                        name=name,
                        kind=kind,
                        step=step,
                        size_bytes=int(size_bytes),
                        path=str(rel),
                        created_at=utcnow(),
                    )
                )
            else:
                row.kind, row.step, row.size_bytes, row.path = kind, step, int(size_bytes), str(rel)

    def delete_checkpoint(self, job_id: str, name: str) -> None:
        """Forget a checkpoint (the worker rotates old DeepSpeed tags away: keep_checkpoints)."""
        with self.db.write() as s:
            s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == name))

    def checkpoints(self, job_id: str) -> list[Checkpoint]:
        with self.db.read() as s:
            self._require(s, job_id)
            rows = list(
                s.execute(
                    select(Checkpoint)
                    .where(Checkpoint.job_id == job_id)
                    .order_by(
                        Checkpoint.step.is_(None), Checkpoint.step, Checkpoint.created_at, Checkpoint.name
                    )
                ).scalars()
            )
            s.expunge_all()
            return rows

    def checkpoint(self, job_id: str, name: str) -> Checkpoint | None:
        """The recorded checkpoint `name` of the job (exact match), or None."""
        with self.db.read() as s:
            self._require(s, job_id)
            row = s.get(Checkpoint, (job_id, name))
            if row is not None:
                s.expunge(row)
            return row

    def set_evaluation(self, job_id: str, evaluation: dict[str, Any]) -> None:
        """Store the job's evaluation results (eval.json); NaN/inf become null."""
        evaluation = json_safe(evaluation)
        with self.db.write() as s:
            n = s.execute(
                update(Job).where(Job.id == job_id).values(evaluation=evaluation, updated_at=utcnow())
            ).rowcount
            if not n:
                raise JobNotFound(job_id)

    def evaluation(self, job_id: str) -> dict[str, Any] | None:
        with self.db.read() as s:
            self._require(s, job_id)
            return s.execute(select(Job.evaluation).where(Job.id == job_id)).scalar_one()
