"""The study spec, its grid, its statistics and when the CLI stops following a study, without a
server (the end-to-end run through the service is tests/cli/test_study.py)."""

import math
from pathlib import Path

import pytest
import yaml
from scipy import stats

from sgmim.spec import SpecError
from sgmim.spec.study import load_study
from sgmim.study.grid import expand
from sgmim.study.results import row_stats, tabulate

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "examples" / "jobs"


def write(tmp_path, **study):
    base = {"name": "s", "pretrain": str(JOBS / "pretrain-tiny.yaml"),
            "finetune": str(JOBS / "finetune-depth-tiny.yaml"),
            "evaluate": str(JOBS / "evaluate-depth-tiny.yaml")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**base, **study}))
    return path


def test_axes_and_variants_reach_the_right_job_keys(tmp_path):
    path = write(tmp_path, variants=[{"name": "simmim", "set": {"method": "simmim"}},
                                     {"name": "sgmim", "set": {"method": "sgmim",
                                                               "finetune.config.schedule.log_every": 7}}],
                 axes={"mask.structured": ["complementary", "random"]}, seeds=[3, 5])
    study, bases = load_study(path)
    cells = {c.id: c for c in expand(study, bases)}
    assert len(cells) == 2 * 2 * 2
    cell = cells["sgmim-mask.structured-random-s5"]
    assert cell.row == "sgmim, mask.structured=random" and cell.seed == 5
    pretrain, finetune = cell.jobs["pretrain"]["config"], cell.jobs["finetune"]["config"]
    assert pretrain["model"]["guidance"]["enabled"] is True
    assert pretrain["model"]["mask"]["structured"] == "random"
    assert pretrain["schedule"]["seed"] == 5 and finetune["schedule"]["seed"] == 5
    assert finetune["schedule"]["log_every"] == 7
    simmim = cells["simmim-mask.structured-complementary-s3"].jobs
    assert simmim["pretrain"]["config"]["model"]["guidance"]["enabled"] is False
    assert simmim["finetune"]["config"]["schedule"]["log_every"] == 8
    assert study.baseline_label() == "simmim, mask.structured=complementary"


def test_a_seed_reaches_a_base_job_without_a_schedule_section(tmp_path):
    """The seed key creates the schedule section of a base job that has none: it starts from
    the job's default schedule (a fine-tuning job's 25 epochs), so every cell stays valid."""
    finetune = yaml.safe_load((JOBS / "finetune-depth-tiny.yaml").read_text())
    del finetune["config"]["schedule"]
    (tmp_path / "finetune.yaml").write_text(yaml.safe_dump(finetune))
    study, bases = load_study(write(tmp_path, finetune=str(tmp_path / "finetune.yaml"), seeds=[4]))
    [cell] = expand(study, bases)
    assert cell.jobs["finetune"]["config"]["schedule"] == {"epochs": 25, "seed": 4}


@pytest.mark.parametrize("study, message", [
    # a value the job schema rejects is named by cell, stage and field path
    ({"axes": {"guidance.extractor": ["mlp", "cnn"]}},
     "cell guidance.extractor-cnn-s0 pretrain config.model.guidance.extractor"),
    ({"axes": {"optim.base_lr": [1e-3]}}, "key 'optim.base_lr': use method"),
    ({"seeds": [1, 1]}, "seeds must be distinct"),
    ({"axes": {"method": ["simmim", "sgmim"]}, "baseline": "mae"}, "baseline 'mae' is not a row"),
])
def test_bad_studies_name_the_field(tmp_path, study, message):
    with pytest.raises(SpecError) as caught:
        study_spec, bases = load_study(write(tmp_path, **study))
        expand(study_spec, bases)
    assert message in str(caught.value)


def test_row_stats_match_a_paired_t_interval():
    base = {0: 0.61, 1: 0.58, 2: 0.64}
    row = {0: 0.66, 1: 0.60, 2: 0.70}
    s = row_stats("row", row, base)
    assert s.n == 3 and math.isclose(s.mean, sum(row.values()) / 3)
    assert math.isclose(s.std, stats.tstd(list(row.values())))
    diffs = [row[k] - base[k] for k in base]
    interval = stats.ttest_rel(list(row.values()), list(base.values())).confidence_interval(0.95)
    assert math.isclose(s.diff, sum(diffs) / 3)
    assert math.isclose(s.ci_low, interval.low) and math.isclose(s.ci_high, interval.high)


def test_table_pairs_only_shared_seeds_and_survives_one_seed():
    tables = tabulate(["a", "b"], "a", ["delta1"],
                      {"a": {0: {"delta1": 0.5}, 1: {"delta1": 0.7}}, "b": {1: {"delta1": 0.9}}})
    a, b = tables["delta1"]
    assert (a.n, b.n, b.n_pairs) == (2, 1, 1)
    assert math.isclose(b.diff, 0.2) and math.isnan(b.std) and math.isnan(b.ci_low)


def _cell(stage, status):
    return {"stage": stage, "status": status}


@pytest.mark.parametrize("active, cells, settled", [
    (True, [_cell("evaluate", "succeeded"), _cell("pretrain", "failed")], True),
    (True, [_cell("evaluate", "succeeded"), _cell("finetune", "pending")], False),  # the next pass submits it
    # cancelled between two stages: nothing in flight and nobody advances it
    (False, [_cell("finetune", "pending"), _cell("pretrain", "cancelled")], True),
    (False, [_cell("pretrain", "cancelling"), _cell("pretrain", "cancelled")], False),  # its worker stops it
])
def test_a_followed_study_settles_when_nothing_more_happens_to_it(active, cells, settled):
    from sgmim.study.collect import settled as is_settled

    assert is_settled({"active": active, "cells": cells}) is settled
