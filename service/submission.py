"""Submitting a job spec: validate, check the data roots and the parent, store it as `queued`.

Shared by POST /api/v1/jobs (which validates in the event loop and stores through the submit
batcher, service/batcher.py), the dashboard's form and the studies (service/studies.py), which
submit their cells' jobs from inside the service with the same checks and idempotency keys as a
client would."""

from __future__ import annotations

import json

from service.broker import Broker
from service.db.base import sha256_hex
from service.db.repo import JobRepo, SubmitResult
from service.errors import SpecValidationError
from service.settings import Settings
from service.texts import check_strings
from sgmim.spec import REQUIRED_PARENT_KIND, AnyJob, parse_spec
from sgmim.spec.paths import PATH_NOT_ALLOWED, paths_outside

# The error type of a multi-node job that the live workers cannot place now: a refusal by the
# deployment's state, not by the spec
NOT_PLACEABLE = "not_placeable"


def validate(data: dict, settings: Settings) -> AnyJob:
    """The checks that need no database: strings, the spec's schema, data paths."""
    check_strings(data, settings.max_string_length)
    spec = parse_spec(data)
    outside = paths_outside(spec, settings.allowed_data_roots(), resolve=False)
    if outside:
        raise SpecValidationError(outside, PATH_NOT_ALLOWED)
    return spec


def needs_database_checks(spec: AnyJob, settings: Settings) -> bool:
    return spec.parent is not None or _placed_on_workers(spec, settings)


def _placed_on_workers(spec: AnyJob, settings: Settings) -> bool:
    return spec.resources.nodes > 1 and settings.multinode_launcher == "workers"


def check_with_database(spec: AnyJob, queue: str, repo: JobRepo, settings: Settings) -> None:
    """The parent exists, has succeeded and has the checkpoint; a multi-node job placed on
    workers has enough hosts with a live worker."""
    if spec.parent is not None:
        repo.check_parent(
            spec.parent.job_id, spec.parent.checkpoint, spec.kind, REQUIRED_PARENT_KIND.get(spec.kind)
        )
    if _placed_on_workers(spec, settings):
        hosts = repo.live_hosts(queue, settings.stale_heartbeat_s)
        if len(hosts) < spec.resources.nodes:
            raise SpecValidationError(
                [("resources.nodes", f"the job asks for {spec.resources.nodes} nodes, but only "
                  f"{len(hosts)} host(s) have a live worker serving queue {queue}"
                  + (f" ({', '.join(sorted(hosts))})" if hosts else "")
                  + "; a multi-node job runs one node per host")],
                NOT_PLACEABLE,
            )


def body_hash(data: dict) -> str:
    """What an idempotency key is bound to: the body as sent, canonically ordered."""
    return sha256_hex(json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def submit_spec(
    data: dict, idempotency_key: str | None, repo: JobRepo, broker: Broker, settings: Settings,
    study: str | None = None,
) -> SubmitResult:
    """The whole submit in one blocking call (a worker thread). The same key and body return
    the earlier job (`created` False); the caller pokes the dispatcher when a job was created.
    `study`: a job of that study's pass, refused (StudyCancelled) once the study is cancelled."""
    spec = validate(data, settings)
    queue = broker.queue_for(spec.resources.gpu_type)
    check_with_database(spec, queue, repo, settings)
    key_hash = None if idempotency_key is None else sha256_hex(idempotency_key)
    return repo.submit(
        spec.model_dump(mode="json"),
        queue=queue,
        idempotency_key_hash=key_hash,
        body_hash=None if idempotency_key is None else body_hash(data),
        idempotency_ttl_s=settings.idempotency_ttl_s,
        study=study,
    )
