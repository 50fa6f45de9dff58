"""Serving files of a run directory safely.

A checkpoint name from the URL is only ever looked up among the rows the worker recorded; the
recorded relative path is then resolved with every symlink followed and must stay inside the
job's run directory (resolved the same way). Anything else is a 404. A DeepSpeed tag folder is
streamed as a tar generated on the fly (no temporary file; Content-Length known up front);
symlinks inside it that leave the run directory are left out.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from service.db.base import json_safe
from sgmim import rundir

log = logging.getLogger("service.artifacts")

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE


def inside(root_real: str, path: str) -> str | None:
    """The real path of `path` when it lies inside `root_real` (itself a real path), else None."""
    real = os.path.realpath(path)
    if real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep):
        return real
    return None


def resolve_in_run_dir(run_dir: Path, rel: str) -> str | None:
    """The real path of `run_dir/rel` if it exists inside the run directory, else None."""
    if not rel or os.path.isabs(rel) or ".." in Path(rel).parts:
        return None
    if not run_dir.is_dir():
        return None
    root = os.path.realpath(run_dir)
    real = inside(root, os.path.join(root, rel))
    if real is None or real == root or not os.path.exists(real):
        return None
    return real


# Tar streaming ---------------------------------------------------------------------------------


@dataclass
class _Entry:
    header: bytes
    path: str | None  # None for directories
    size: int


def _tarinfo(arcname: str, st: os.stat_result, is_dir: bool) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mtime = int(st.st_mtime)
    info.mode = stat.S_IMODE(st.st_mode) if is_dir else (stat.S_IMODE(st.st_mode) & 0o777)
    if is_dir:
        info.type = tarfile.DIRTYPE
        info.size = 0
    else:
        info.type = tarfile.REGTYPE
        info.size = st.st_size
    info.uname = info.gname = ""
    return info


def tar_plan(root_real: str, folder_real: str, arc_prefix: str) -> list[_Entry]:
    """The members of a tar of `folder_real` (inside `root_real`), named `arc_prefix/...`.
    Symlinks are followed only when their target is inside the run directory."""
    entries: list[_Entry] = []

    def add_dir(path: str, arcname: str) -> None:
        info = _tarinfo(arcname, os.stat(path), True)
        entries.append(_Entry(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), None, 0))

    add_dir(folder_real, arc_prefix)
    for dirpath, dirnames, filenames in os.walk(folder_real, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, folder_real)
        for name in list(dirnames):
            full = os.path.join(dirpath, name)
            if os.path.islink(full):  # not walked into; a link to a folder is left out
                log.warning("tar: leaving out linked folder %s", full)
                dirnames.remove(name)
                continue
            add_dir(full, _arc(arc_prefix, rel_dir, name))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            real = inside(root_real, full)
            if real is None:
                log.warning("tar: leaving out %s (points outside the run directory)", full)
                continue
            st = os.stat(real)
            if not stat.S_ISREG(st.st_mode):
                continue
            info = _tarinfo(_arc(arc_prefix, rel_dir, name), st, False)
            entries.append(
                _Entry(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), real, st.st_size)
            )
    return entries


def _arc(prefix: str, rel_dir: str, name: str) -> str:
    return f"{prefix}/{name}" if rel_dir == "." else f"{prefix}/{rel_dir}/{name}"


def _pad(n: int) -> int:
    return (BLOCK - n % BLOCK) % BLOCK


def tar_size(entries: list[_Entry]) -> int:
    return sum(len(e.header) + e.size + _pad(e.size) for e in entries) + 2 * BLOCK


def stream_tar(entries: list[_Entry]) -> Iterator[bytes]:
    for e in entries:
        yield e.header
        if e.path is None:
            continue
        remaining = e.size
        try:
            for chunk in stream_file(e.path, 0, e.size - 1):
                remaining -= len(chunk)
                yield chunk
        except OSError as exc:
            log.warning("tar: %s became unreadable: %s", e.path, exc)
        if remaining > 0:  # the file shrank: keep the archive well-formed
            log.warning("tar: %s shrank while streaming; padding %d bytes", e.path, remaining)
            while remaining > 0:
                n = min(CHUNK, remaining)
                remaining -= n
                yield bytes(n)
        if _pad(e.size):
            yield bytes(_pad(e.size))
    yield bytes(2 * BLOCK)


# Byte ranges -----------------------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Unsatisfiable(Exception):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range; None to send the whole file (no header,
    several ranges or a malformed header: RFC 9110 lets a server ignore those); raises
    Unsatisfiable when the range lies outside the file."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first == "" and last == "":
        return None
    if first == "":
        n = int(last)
        if n == 0 or size == 0:
            raise Unsatisfiable
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if last != "" and int(last) < start:
        return None  # invalid range spec: ignore the header
    if start >= size:
        raise Unsatisfiable
    return start, end


def stream_file(path: str, start: int, end: int) -> Iterator[bytes]:
    remaining = end - start + 1
    with open(path, "rb") as f:
        f.seek(start)
        while remaining > 0:
            chunk = f.read(min(CHUNK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield chunk


def file_validators(st: os.stat_result) -> dict[str, str]:
    return {
        "etag": f'"{st.st_mtime_ns:x}-{st.st_size:x}"',
        "last-modified": formatdate(st.st_mtime, usegmt=True),
    }


def disk_usage(path: Path) -> int:
    """Bytes the files under `path` take (0 when it does not exist); symlinks are not followed."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def remove_tree_except(run_dir: Path, keep: tuple[str, ...] = ()) -> int:
    """Delete the run directory, or everything in it but the relative paths `keep`; returns the
    bytes freed."""
    import shutil

    if not run_dir.is_dir():
        return 0
    before = disk_usage(run_dir)
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
        return before
    kept = {os.path.normpath(k) for k in keep}
    for dirpath, dirs, files in os.walk(run_dir, topdown=False):
        rel_dir = os.path.relpath(dirpath, run_dir)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if rel not in kept:
                os.unlink(os.path.join(dirpath, name))
        for name in dirs:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                os.unlink(full)
            elif not os.listdir(full):
                os.rmdir(full)
    return before - disk_usage(run_dir)


def eval_file(run_dir: Path) -> dict | None:
    """The run directory's eval.json, when it holds a JSON object (NaN/inf as null)."""
    path = resolve_in_run_dir(run_dir, rundir.EVAL)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return json_safe(data) if isinstance(data, dict) else None
