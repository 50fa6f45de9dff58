"""Submitting a job spec: validate, check the data roots and the parent, store it as `queued`.

Shared by POST /api/v1/jobs and the studies (service/studies.py), which submit their cells'
jobs from inside the service with the same checks and idempotency keys as a client would."""

from __future__ import annotations

import json

from service.broker import Broker
from service.db.base import sha256_hex
from service.db.repo import JobRepo, SubmitResult
from service.errors import SpecValidationError
from service.settings import Settings
from service.texts import check_strings
from sgmim.spec import REQUIRED_PARENT_KIND, parse_spec
from sgmim.spec.paths import PATH_NOT_ALLOWED, paths_outside


def submit_spec(
    data: dict, idempotency_key: str | None, repo: JobRepo, broker: Broker, settings: Settings
) -> SubmitResult:
    """Blocking (one worker thread per request). The same key and body return the earlier job
    (`created` False); the caller pokes the dispatcher when a job was created."""
    key_hash = body_hash = None
    if idempotency_key is not None:
        key_hash = sha256_hex(idempotency_key)
        body_hash = sha256_hex(json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    return _submit(data, key_hash, body_hash, repo, broker, settings)


def _submit(
    data: dict, key_hash: str | None, body_hash: str | None, repo: JobRepo, broker: Broker, settings: Settings
) -> SubmitResult:
    """Validate, check the parent, store: one worker thread per request."""
    check_strings(data, settings.max_string_length)
    spec = parse_spec(data)
    outside = paths_outside(spec, settings.allowed_data_roots(), resolve=False)
    if outside:
        raise SpecValidationError(outside, PATH_NOT_ALLOWED)
    if spec.parent is not None:
        repo.check_parent(
            spec.parent.job_id, spec.parent.checkpoint, spec.kind, REQUIRED_PARENT_KIND.get(spec.kind)
        )
    queue = broker.queue_for(spec.resources.gpu_type)
    if spec.resources.nodes > 1 and settings.multinode_launcher == "workers":
        hosts = repo.live_hosts(queue, settings.stale_heartbeat_s)
        if len(hosts) < spec.resources.nodes:
            raise SpecValidationError(
                [("resources.nodes", f"the job asks for {spec.resources.nodes} nodes, but only "
                  f"{len(hosts)} host(s) have a live worker serving queue {queue}"
                  + (f" ({', '.join(sorted(hosts))})" if hosts else "")
                  + "; a multi-node job runs one node per host")],
            )
    result = repo.submit(
        spec.model_dump(mode="json"),
        queue=queue,
        idempotency_key_hash=key_hash,
        body_hash=body_hash,
        idempotency_ttl_s=settings.idempotency_ttl_s,
    )
    return result
