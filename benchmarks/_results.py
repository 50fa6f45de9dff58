"""Shared by the benchmark scripts: replace one section of benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import re
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    import os

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    return f"CPU only, {os.cpu_count()} cores ({platform.processor() or platform.machine()})"


def write_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of RESULTS.md, keeping the others."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    header = f"## {title}"
    block = f"{header}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block
    RESULTS.write_text(text.rstrip() + "\n")


def today() -> str:
    return date.today().isoformat()
