"""The job-status vocabulary shared by the repository, the API schemas, the supervisor and the
CLI. The database stores the values as plain strings; a `StrEnum` member compares equal to its
string, so rows, JSON and members mix freely.

    queued ──▶ running ──▶ succeeded | failed
       │          │  ╲
       │          │   ╲─▶ queued          (the reaper requeues a job whose worker vanished)
       │          ▼
       │      cancelling ──▶ cancelled | succeeded | failed
       ▼
    cancelled            failed | cancelled ──▶ queued   (resume)
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def active(self) -> bool:
        """A process of the job may be running."""
        return self in ACTIVE

    def can_become(self, target: JobStatus | str) -> bool:
        return target in TRANSITIONS[self]


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})

# from -> allowed targets
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    # running -> queued: the reaper requeues a job whose worker vanished
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLING,
                                  JobStatus.QUEUED}),
    # a run that ends on its own right when a cancel lands keeps its real outcome
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),  # resume
    JobStatus.CANCELLED: frozenset({JobStatus.QUEUED}),  # resume
}

# What `sgmim watch` exits with when the job ends in each terminal state.
WATCH_EXIT_CODES: dict[JobStatus, int] = {
    JobStatus.SUCCEEDED: 0,
    JobStatus.FAILED: 1,
    JobStatus.CANCELLED: 2,
}
