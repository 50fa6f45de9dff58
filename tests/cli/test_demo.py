"""`sgmim demo` (small size) tells the whole story and ends with finite numbers for both."""

import math
import re

import pytest

from sgmim.cli.demo import DemoSize, demo_study
from sgmim.data.downstream import build_downstream_dataset
from sgmim.data.synthetic.export import write_synthetic_dataset
from sgmim.spec.data import DownstreamDataConfig
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


def test_the_demo_fine_tunes_and_evaluates_on_every_scene_it_rendered(tmp_path):
    """The fine-tuning example caps its synthetic splits at 128 scenes; the demo's folder data is
    all used, whatever its size (the default demo renders 256 training scenes)."""
    size = DemoSize(train_images=160, val_images=3, pretrain_epochs=1, finetune_epochs=1)
    for split, count in (("train", size.train_images), ("val", size.val_images)):
        write_synthetic_dataset(tmp_path / split, count, (32, 32), split)
    _, bases = demo_study(tmp_path, size)
    data = DownstreamDataConfig.model_validate(bases["finetune"]["config"]["data"])
    train = build_downstream_dataset(data, data.train_split, "depth", train=True)
    val = build_downstream_dataset(data, data.val_split, "depth", train=False)
    assert (len(train), len(val)) == (size.train_images, size.val_images)
