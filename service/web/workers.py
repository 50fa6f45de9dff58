"""/workers: the worker registry, the jobs running and the queue.

Every worker registers itself (host, the address other nodes' ranks use, GPUs, queues) and
heartbeats its row; a row older than `stale_heartbeat_s` is a gone worker. The page shows the
registry (idle workers included), the running jobs with the age of their heartbeat, workers
that made an attempt lately but are not registered now, and the queued jobs in the order
workers take them.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.db.models import utcnow
from service.deps import RepoDep, SettingsDep
from service.web.templating import page

router = APIRouter(include_in_schema=False)

RECENT = dt.timedelta(hours=24)


@router.get("/workers")
def workers_page(request: Request, repo: RepoDep, settings: SettingsDep) -> Response:
    now = utcnow()
    busy = []
    for job in repo.running_jobs():
        resources = (job.spec or {}).get("resources", {})
        age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else None
        busy.append(
            {
                "worker": job.worker,
                "job": job,
                "heartbeat_age": age,
                "alive": age is not None and age < settings.stale_heartbeat_s,
                "gpus": resources.get("gpus", 1) * resources.get("nodes", 1),
                "gpu_type": resources.get("gpu_type"),
            }
        )
    registered = [
        {"row": w, "heartbeat_age": (now - w.heartbeat_at).total_seconds(),
         "alive": (now - w.heartbeat_at).total_seconds() < settings.stale_heartbeat_s}
        for w in repo.workers()
    ]
    busy_names = {b["worker"] for b in busy} | {r["row"].name for r in registered}
    recent: dict[str, dict[str, Any]] = {}
    for attempt in repo.recent_attempts(now - RECENT):
        seen = attempt.finished_at or attempt.started_at
        entry = recent.setdefault(
            attempt.worker, {"worker": attempt.worker, "attempts": 0, "last": attempt, "last_seen": seen}
        )
        entry["attempts"] += 1
        entry["last_seen"] = max(entry["last_seen"], seen)
    context = {
        "registered": registered,
        "busy": busy,
        "recent": [r for name, r in recent.items() if name not in busy_names],
        "queued": repo.queued_jobs(),
        "counts": repo.count_by_status(),
        "stale_after": settings.stale_heartbeat_s,
        "now": now,
    }
    return page(request, "workers.html", context)
