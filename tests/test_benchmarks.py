"""Every benchmark script imports against the current code: a benchmark is run rarely, by
hand, so a renamed import would otherwise surface only when someone needs its numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if 'if __name__ == "__main__"' in p.read_text())


def test_the_benchmark_scripts_are_all_found():
    assert {p.name for p in SCRIPTS} >= {"epoch_bench.py", "loader_bench.py", "train_bench.py",
                                         "service_bench.py", "gpu_phases.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_imports(script: Path):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # its imports; main() runs only as a script
    assert callable(module.main)
