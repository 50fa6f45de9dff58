"""Reading a run directory while the trainer writes it: tails of `metrics.jsonl` and
`train.log` by byte offset, `run_info.json`, and the checkpoint tags that are complete.

No torch here: the supervisor runs in the Celery worker process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgmim import rundir
from sgmim.rundir import TAG_PATTERN

log = logging.getLogger("worker.supervisor")

METRIC_NAME = re.compile(r"^[^\x00-\x1f]{1,128}$")
NOT_METRICS = frozenset({"step", "epoch", "time"})


class LineTail:
    """Complete lines appended to a file since `offset` (bytes). A last line without its newline
    waits for the next read, unless `final` (the writer has exited)."""

    def __init__(self, path: Path, offset: int = 0):
        self.path, self.offset = Path(path), int(offset)

    def read(self, max_bytes: int = 1 << 20, final: bool = False) -> list[bytes]:
        try:
            with self.path.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    log.warning(
                        "%s shrank below offset %d; reading it from the start", self.path, self.offset
                    )
                    self.offset = 0
                f.seek(self.offset)
                data = f.read(max_bytes)
        except FileNotFoundError:
            return []
        if not data:
            return []
        full = len(data) == max_bytes  # there may be more after this read
        end = data.rfind(b"\n")
        if end >= 0:
            take = data[: end + 1]
            lines = take.split(b"\n")[:-1]
            if final and not full and end + 1 < len(data):
                lines.append(data[end + 1 :])
                take = data
        elif full or final:  # a line longer than a whole read, or the writer is gone
            take, lines = data, [data]
        else:
            return []
        self.offset += len(take)
        return lines


def metric_points(line: bytes) -> list[dict[str, Any]]:
    """`{"step", "epoch", <name>: value, ..., "time"}` → points `{name, value, step, epoch, time}`.
    Non-numeric fields and names the database refuses are skipped; a line that is not a JSON
    object gives nothing."""
    try:
        record = json.loads(line)
    except ValueError:
        log.warning("skipping a metrics line that is not JSON: %.200r", line)
        return []
    if not isinstance(record, dict):
        return []
    step, epoch, when = record.get("step"), record.get("epoch"), record.get("time")
    step = (
        int(step)
        if isinstance(step, int | float) and not isinstance(step, bool) and math.isfinite(step)
        else None
    )
    epoch = float(epoch) if _number(epoch) and math.isfinite(epoch) else None
    when = float(when) if _number(when) and math.isfinite(when) else None
    points = []
    for name, value in record.items():
        if name in NOT_METRICS or not _number(value) or not METRIC_NAME.match(name):
            continue
        points.append({"name": name, "value": float(value), "step": step, "epoch": epoch, "time": when})
    return points


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_json(path: Path) -> Any:
    """The JSON content of a file, None when it is missing or not (yet) valid."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def tree_size(path: Path) -> int:
    """Bytes of the files under a folder (or of a file); files vanishing meanwhile are skipped."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def last_lines(path: Path, n: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last n lines of a text file (reads at most max_bytes from its end)."""
    try:
        with Path(path).open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is probably cut
    return [line.rstrip() for line in lines if line.strip()][-n:]


@dataclass
class CheckpointScan:
    complete: dict[str, int] = field(default_factory=dict)  # tag -> step, saved whole
    present: set[str] = field(default_factory=set)  # every global_stepN folder


def scan_checkpoints(ckpt_dir: Path) -> CheckpointScan:
    """Tags that are complete: a `global_stepN` folder with N <= the step `latest` names that
    holds the trainer's record, written once every rank has saved it (DeepSpeed's rank 0 writes
    `latest` when its own files are written, so a node lost mid-save leaves it naming a tag cut
    short). Runs from before the record (no tag holds one) count every tag up to `latest`."""
    scan = CheckpointScan()
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return scan
    steps = {}
    for name in names:
        m = TAG_PATTERN.match(name)
        if m and (ckpt_dir / name).is_dir():
            steps[name] = int(m.group(1))
    scan.present = set(steps)
    try:
        latest = (ckpt_dir / rundir.LATEST).read_text().strip()
    except OSError:
        return scan
    m = TAG_PATTERN.match(latest)
    if m is None or latest not in steps:
        return scan
    limit = int(m.group(1))
    recorded = {name for name in steps if (ckpt_dir / name / rundir.WHOLE_TAG_RECORD).is_file()}
    scan.complete = {name: step for name, step in steps.items()
                     if step <= limit and (name in recorded or not recorded)}
    return scan
