"""Terminal-state housekeeping in the API process: webhooks and checkpoint retention.

Webhooks: a job that reaches succeeded, failed or cancelled is marked `notify_state = pending`
in the same transaction (repo._transition). Every `notify_interval_s` this pass POSTs each due
one to its URL (the spec's `webhook`, else the `webhook_url` setting) with the body

    {"event": "job.finished", "job_id", "name", "kind", "status", "error", "tags",
     "attempt", "finished_at", "sent_at"}

and, when `webhook_secret` is set, the header `X-SGMIM-Signature: sha256=<hex>` (HMAC-SHA256
of the exact body bytes with the secret). A 2xx answer marks it `sent`; anything else is
retried after `webhook_backoff_s`, doubling, for `webhook_attempts` tries, then `failed`.
Several API processes may deliver the same event twice (at-least-once): receivers dedupe on
(job_id, status, finished_at).

Retention: with `keep_checkpoints` set, ended jobs holding more DeepSpeed tags are pruned to it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging

import httpx

from service.db.models import Job, utcnow
from service.db.organise import unpack_tags
from service.db.repo import JobRepo
from service.settings import Settings

log = logging.getLogger("service.notify")

SIGNATURE_HEADER = "X-SGMIM-Signature"


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(job: Job) -> bytes:
    return json.dumps(
        {
            "event": "job.finished",
            "job_id": job.id,
            "name": job.name,
            "kind": job.kind,
            "status": job.status,
            "error": job.error,
            "tags": unpack_tags(job.tags),
            "attempt": job.attempt,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "sent_at": utcnow().isoformat(),
        },
        separators=(",", ":"),
    ).encode()


def deliver(job: Job, url: str, settings: Settings, http: httpx.Client) -> bool:
    body = payload(job)
    headers = {"Content-Type": "application/json", "User-Agent": "sgmim-webhook/1"}
    if settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(settings.webhook_secret, body)
    try:
        response = http.post(url, content=body, headers=headers, timeout=settings.webhook_timeout_s)
    except httpx.HTTPError as exc:
        log.warning("webhook for job %s to %s failed: %s", job.id, url, exc)
        return False
    if response.is_success:
        return True
    log.warning("webhook for job %s to %s answered %d", job.id, url, response.status_code)
    return False


def notify_once(repo: JobRepo, settings: Settings, http: httpx.Client) -> int:
    """Deliver the due notifications; returns how many were sent."""
    sent = 0
    for job in repo.due_notifications():
        url = job.webhook_url or settings.webhook_url
        if not url:
            repo.notified(job.id, "none", 0)
            continue
        attempts = job.notify_attempts + 1
        if deliver(job, url, settings, http):
            repo.notified(job.id, "sent", attempts)
            sent += 1
        elif attempts >= settings.webhook_attempts:
            repo.notified(job.id, "failed", attempts)
        else:
            wait = settings.webhook_backoff_s * 2 ** (attempts - 1)
            repo.notified(job.id, "pending", attempts, utcnow() + dt.timedelta(seconds=wait))
    return sent


def retention_once(repo: JobRepo, settings: Settings) -> None:
    from service.routes.checkpoints import prune

    if settings.keep_checkpoints is None:
        return
    for job_id in repo.terminal_jobs_with_checkpoints_over(settings.keep_checkpoints):
        result = prune(repo, settings, job_id, settings.keep_checkpoints)
        log.info("retention: job %s: removed %s (%d bytes)", job_id, result.removed, result.freed_bytes)


def housekeeping_once(repo: JobRepo, settings: Settings, http: httpx.Client) -> None:
    notify_once(repo, settings, http)
    retention_once(repo, settings)
