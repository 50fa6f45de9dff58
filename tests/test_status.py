"""The job-status vocabulary, without a database."""

import json

import pytest

from sgmim.status import ACTIVE, TERMINAL, TRANSITIONS, WATCH_EXIT_CODES, JobStatus


def test_every_status_has_its_transitions_and_the_sets_partition_the_rest():
    assert set(TRANSITIONS) == set(JobStatus)
    assert TERMINAL.isdisjoint(ACTIVE)
    assert set(JobStatus) - TERMINAL - ACTIVE == {JobStatus.QUEUED}
    assert set(WATCH_EXIT_CODES) == TERMINAL


@pytest.mark.parametrize(("source", "target", "allowed"), [
    ("queued", "running", True),        # a worker claims it
    ("queued", "cancelled", True),      # cancelled before it started
    ("queued", "succeeded", False),
    ("running", "queued", True),        # the reaper requeues a lost worker's job
    ("running", "cancelling", True),
    ("cancelling", "succeeded", True),  # the run ended on its own as the cancel landed
    ("cancelling", "running", False),
    ("succeeded", "queued", False),     # a success is final
    ("failed", "queued", True),         # resume
    ("cancelled", "queued", True),      # resume
    ("cancelled", "running", False),
])
def test_transitions(source, target, allowed):
    assert JobStatus(source).can_become(target) is allowed


def test_members_are_their_strings():
    """Rows store plain strings: members and strings must compare, hash and serialise alike."""
    assert JobStatus.RUNNING == "running"
    assert "running" in ACTIVE and "failed" in TERMINAL
    assert json.dumps({"status": JobStatus.FAILED}) == '{"status": "failed"}'
    assert JobStatus("cancelling").active and JobStatus("cancelled").terminal
    with pytest.raises(ValueError):
        JobStatus("Running")
