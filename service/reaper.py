"""The reaper: recovers jobs whose worker vanished and queued jobs whose message was lost.

`reap_once` is one pass; run it every `reaper_interval_s` from the worker process (or from the
API with SGMIM_REAPER_IN_API=true). Several reapers at once are harmless: each requeue is one
transaction that re-checks the status, and a duplicate wake-up message only fails its claim.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from service.broker import Broker, dispatch
from service.db.errors import InvalidTransition
from service.db.repo import JobRepo
from service.settings import Settings
from sgmim.status import JobStatus

log = logging.getLogger("service.reaper")


@dataclass
class ReapReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)


def reap_once(repo: JobRepo, broker: Broker, settings: Settings) -> ReapReport:
    report = ReapReport()
    for stale in repo.find_stale_running(settings.stale_heartbeat_s):
        try:
            outcome = repo.requeue(
                stale.id, f"worker {stale.worker} lost (no heartbeat for {settings.stale_heartbeat_s:.0f} s)"
            )
        except InvalidTransition:
            continue  # it moved on meanwhile
        outcomes = {JobStatus.QUEUED: report.requeued, JobStatus.FAILED: report.failed,
                    JobStatus.CANCELLED: report.cancelled}
        outcomes[outcome].append(stale.id)
        log.warning(
            "job %s (attempt %d on %s): heartbeat stale, now %s",
            stale.id,
            stale.attempt,
            stale.worker,
            outcome,
        )
    for job in repo.find_unclaimed_queued(settings.unclaimed_requeue_s):
        if dispatch(repo, broker, job):
            report.resent.append(job.id)
    return report
