"""The queue contract: the Celery app shared by the API (which only sends) and the worker
(which consumes), owned by the service.

Importable without torch. The API sends `sgmim.run_job` by NAME with the job id as its only
argument (`send_task`); it never imports task code. The worker (`python -m worker`) registers
the task by importing `worker.tasks` itself.

Choices (docs/notes.md "Celery 5.7", docs/architecture.md "Principles"): the database owns job
state; the message only wakes a worker, which claims the job row atomically (a second claim fails).

- `task_acks_late=True` + `worker_prefetch_multiplier=1` + concurrency 1: a worker reserves
  only the message it is running, so a queued job is never stuck in the prefetch buffer of a
  box that is busy for hours (with early ack, a busy worker would hold one more message).
- `broker_transport_options.visibility_timeout` (Redis) is long (settings, default 7 days):
  Redis redelivers an unacked message after it, and docs/notes.md records a second concurrent run of
  a long task when it was short. A redelivered message is harmless here anyway: its claim fails
  because the job is no longer `queued`.
- `task_reject_on_worker_lost=False`: when the pool child dies, the message is acked, not
  requeued. Recovery is the reaper's job (stale heartbeat -> requeue + send again); a
  requeued message would only find the job still `running` and do nothing.
- `worker_cancel_long_running_tasks_on_connection_loss=False`: a broker hiccup must not kill a
  training run; the redelivered copy fails its claim.
- No result backend: results live in the database.

Priorities: the spec's `priority` 0..9 (9 runs first). Redis serves priority 0 first
(`priority_steps` 0..9, `queue_order_strategy="priority"`), so the message priority is
`9 - priority` (`message_priority`). The filesystem transport has no priorities: its queue is
FIFO by send time (file names start with a millisecond clock) whatever the priority.

Queues: `sgmim` by default, `sgmim.<gpu_type>` for a spec with `resources.gpu_type`
(`queue_for`). A worker listens to the queues of the GPU types it has plus `sgmim`, and to its
host's own queue `sgmim.host.<host>` (`host_queue`), where a multi-node job's placement sends
`sgmim.run_node(job_id, attempt, node_rank)` to each chosen worker (service/gang.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

TASK_NAME = "sgmim.run_job"
NODE_TASK_NAME = "sgmim.run_node"  # (job_id, attempt, node_rank): one node of a placed gang
DEFAULT_QUEUE = "sgmim"
REDIS_SEP = ":"


def queue_for(gpu_type: str | None, default_queue: str = DEFAULT_QUEUE) -> str:
    return f"{default_queue}.{gpu_type}" if gpu_type else default_queue


def host_queue(host: str, default_queue: str = DEFAULT_QUEUE) -> str:
    """The queue only the workers of one host consume: a gang's node messages go there."""
    return f"{default_queue}.host.{host}"


def message_priority(spec_priority: int, broker_url: str) -> int:
    """Broker priority of a message for a spec priority 0..9 (9 first)."""
    p = max(0, min(9, int(spec_priority)))
    return 9 - p if broker_url.startswith(("redis://", "rediss://", "redis+socket://")) else p


def filesystem_folders(data_dir: Path) -> dict[str, Path]:
    base = Path(data_dir).expanduser() / "broker"
    return {"queue": base / "queue", "processed": base / "processed", "control": base / "control"}


def transport_options(broker_url: str, data_dir: Path, visibility_timeout_s: int) -> dict[str, Any]:
    if broker_url.startswith("filesystem://"):
        folders = filesystem_folders(data_dir)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "processed_folder": str(folders["processed"]),
            "control_folder": str(folders["control"]),
            "store_processed": False,
        }
    if broker_url.startswith(("redis://", "rediss://", "redis+socket://")):
        return {
            "visibility_timeout": visibility_timeout_s,
            "priority_steps": list(range(10)),
            "queue_order_strategy": "priority",
            "sep": REDIS_SEP,
        }
    return {"visibility_timeout": visibility_timeout_s}


def make_celery(settings: Any) -> Celery:
    """A Celery app from the service settings (`service.settings.Settings` or anything with
    broker_url/resolved_broker_url, result_backend, data_dir, default_queue and
    broker_visibility_timeout_s)."""
    broker_url = getattr(settings, "resolved_broker_url", None) or settings.broker_url or "filesystem://"
    default_queue = getattr(settings, "default_queue", DEFAULT_QUEUE)
    app = Celery(
        "sgmim",
        broker=broker_url,
        backend=settings.result_backend or None,
        set_as_current=False,
    )
    app.conf.update(
        broker_transport_options=transport_options(
            broker_url,
            settings.data_dir,
            int(getattr(settings, "broker_visibility_timeout_s", 7 * 24 * 3600)),
        ),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_default_queue=default_queue,
        task_create_missing_queues=True,
        task_acks_late=True,
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_priority=message_priority(5, broker_url),
        worker_hijack_root_logger=False,
    )
    return app


def _default_app() -> Celery:
    from service.settings import Settings

    return make_celery(Settings())


def __getattr__(name: str) -> Any:
    # `celery -A service.queue:app ...` (Flower, `control`) builds the app from the environment on first use,
    # so importing this module has no side effects (no folders created, no settings read).
    if name == "app":
        global app
        app = _default_app()
        return app
    raise AttributeError(name)
