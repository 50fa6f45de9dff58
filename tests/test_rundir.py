"""The run-directory contract between the trainer and the supervisor."""

import subprocess
import sys

import pytest

from sgmim.rundir import TrainerExit, exit_meaning, step_of, tag_for


def test_tags_round_trip_and_other_names_are_not_tags():
    assert tag_for(120) == "global_step120"
    assert step_of(tag_for(120)) == 120
    for name in ("latest", "global_step12_universal", "global_stepX", "step12"):
        assert step_of(name) is None


@pytest.mark.parametrize(("code", "meaning"), [
    (0, "done"), (1, "training error"), (2, "bad spec or input"), (3, "non-finite loss or gradient"),
    (7, "error"),
])
def test_exit_meanings(code, meaning):
    assert exit_meaning(code) == meaning


def test_the_trainer_and_supervisor_share_the_codes():
    from sgmim.train import run
    from worker.supervisor import describe_exit

    assert run.TrainerExit is TrainerExit
    assert describe_exit(TrainerExit.NONFINITE) == "trainer exited with code 3 (non-finite loss or gradient)"


def test_the_contract_imports_no_torch():
    """The supervisor reads the run directory from the Celery process, which must never
    initialise CUDA: the contract module (and the status vocabulary) must not pull torch in."""
    code = "import sys, sgmim.rundir, sgmim.status; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
