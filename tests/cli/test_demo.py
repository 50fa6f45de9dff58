"""`sgmim demo` (small size) tells the whole story and ends with finite numbers for both."""

import math
import re

import pytest

from tests.cli.conftest import clean_env, cli

pytestmark = pytest.mark.slow


@pytest.mark.timeout(960)  # the whole story in one process: longer than the suite's 600 s default
def test_demo_small(tmp_path):
    done = cli("demo", "--size", "small", "--workdir", str(tmp_path / "demo"), env=clean_env(), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"│ (SG-MIM|SimMIM) +│ \S+ +│ (\S+) +│ (\S+) +│ (\S+) +│", done.stdout)}
    assert set(rows) == {"SG-MIM", "SimMIM"}, done.stdout[-2000:]
    for values in rows.values():
        rmse, abs_rel, delta1 = (float(v) for v in values)
        assert math.isfinite(rmse) and rmse > 0 and math.isfinite(abs_rel) and 0 <= delta1 <= 1
    png = tmp_path / "demo" / "pretrain-losses.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://127.0.0.1:" in done.stdout and str(tmp_path / "demo" / "state") in done.stdout
