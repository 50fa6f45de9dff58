"""The run directory: the contract between the trainer, which writes it, and the worker's
supervisor and the API, which read it. No torch here: the supervisor runs in the Celery
worker process and must never initialise CUDA.

    <artifact_root>/jobs/<job_id>/
      spec.json                   the validated spec the attempt runs (init_path filled in)
      ds_config.json              the DeepSpeed config the trainer rendered
      run_info.json               total_steps and steps_per_epoch, written before the first step
      metrics.jsonl               rank 0: one JSON object per line {step, epoch, time, name: value}
      train.log                   every rank's log lines, and the launcher's stdout and stderr
      checkpoints/global_stepN/   DeepSpeed tags; checkpoints/latest names the newest whole one
      export/encoder.safetensors  a pretraining job's encoder
      export/model.safetensors    a fine-tuning job's encoder + head
      eval.json                   a fine-tuning or evaluation job's results
      .worker-state.json          the supervisor's tail offsets, for the next attempt

docs/architecture.md draws the same table with who writes and who reads each file.
"""

from __future__ import annotations

import os
import re
from enum import IntEnum
from pathlib import Path

SPEC = "spec.json"
DS_CONFIG = "ds_config.json"
RUN_INFO = "run_info.json"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
EVAL = "eval.json"
CHECKPOINTS = "checkpoints"
LATEST = "latest"  # inside CHECKPOINTS: the tag DeepSpeed's rank 0 finished writing last
# inside a tag folder, written by the trainer once every rank has saved the tag: {"zero_stage": N}
WHOLE_TAG_RECORD = "sgmim_zero.json"
EXPORT_DIR = "export"
ENCODER_EXPORT = f"{EXPORT_DIR}/encoder.safetensors"
MODEL_EXPORT = f"{EXPORT_DIR}/model.safetensors"
WORKER_STATE = ".worker-state.json"
# an attempt's outcome the worker could not record yet: the next attempt records it instead of
# running the job again
PENDING_OUTCOME = ".worker-outcome.json"

TAG_PATTERN = re.compile(r"^global_step(\d+)$")


def tag_for(step: int) -> str:
    """The DeepSpeed checkpoint tag of a step."""
    return f"global_step{step}"


def step_of(tag: str) -> int | None:
    """The step a checkpoint tag names, or None for anything else (`latest`, `*_universal`)."""
    match = TAG_PATTERN.match(tag)
    return int(match.group(1)) if match else None


def atomic_write_text(path: Path, text: str) -> None:
    """Readers of the run dir see the old file or the new one, never a half-written one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class TrainerExit(IntEnum):
    """`python -m sgmim.train`'s exit codes; the reason is the last line of train.log."""

    OK = 0
    ERROR = 1
    BAD_INPUT = 2
    NONFINITE = 3

    @property
    def meaning(self) -> str:
        return _EXIT_MEANINGS[self]


_EXIT_MEANINGS = {
    TrainerExit.OK: "done",
    TrainerExit.ERROR: "training error",
    TrainerExit.BAD_INPUT: "bad spec or input",
    TrainerExit.NONFINITE: "non-finite loss or gradient",
}


def exit_meaning(code: int) -> str:
    """What a trainer's exit code means; any code the trainer does not define is an error."""
    try:
        return TrainerExit(code).meaning
    except ValueError:
        return "error"


# The environment the supervisor gives every process of an attempt.
ENV_JOB_ID = "SGMIM_JOB_ID"  # marks the attempt's processes, so a sweep finds strays
ENV_ATTEMPT = "SGMIM_ATTEMPT"
ENV_LOG_TO_STDOUT = "SGMIM_LOG_TO_STDOUT"  # "0": the supervisor writes stdout into train.log itself
