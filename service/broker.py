"""Sending wake-up messages and measuring queue depth.

The API sends `sgmim.run_job(job_id)` by name (the message carries only the job id), always
through `dispatch`: submit, resume and the reaper's resend order "send" and "mark sent" the
same way. Queue
depth comes from the broker: Redis `LLEN` of the queue and its priority sub-queues, or the
filesystem transport's message files; when the broker cannot be asked, the caller falls back
to counting queued jobs in the database (`/metrics` labels which source it used).
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from celery import Celery

from service.db.gang import Gang
from service.queue import (
    NODE_TASK_NAME,
    REDIS_SEP,
    TASK_NAME,
    filesystem_folders,
    host_queue,
    make_celery,
    message_priority,
    queue_for,
    transport_options,
)
from service.settings import Settings

if TYPE_CHECKING:
    from service.db.repo import JobRepo

log = logging.getLogger("service.broker")


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "redis+socket://"))


class Broker:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = settings.resolved_broker_url
        self._celery: Celery | None = None
        self._redis: Any = None
        self._lock = threading.Lock()

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            with self._lock:
                if self._celery is None:
                    self._celery = make_celery(self.settings)
        return self._celery

    def prepare(self) -> None:
        """Create the filesystem broker's folders (so that /readyz is ready before the first send)."""
        if self.url.startswith("filesystem://"):
            transport_options(self.url, self.settings.data_dir, self.settings.broker_visibility_timeout_s)

    def queue_for(self, gpu_type: str | None) -> str:
        return queue_for(gpu_type, self.settings.default_queue)

    def producer(self) -> AbstractContextManager[Any]:
        """One producer for several `enqueue`s (a dispatcher pass): taking one from the pool
        per message is a quarter of a send's CPU."""
        return self.celery.producer_or_acquire()

    def enqueue(self, job_id: str, queue: str, priority: int, producer: Any = None) -> None:
        """Send the wake-up message for a queued job (raises when the broker is unreachable)."""
        self.celery.send_task(
            TASK_NAME,
            args=[job_id],
            queue=queue,
            priority=message_priority(priority, self.url),
            producer=producer,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 1},
        )

    def enqueue_node(self, job_id: str, attempt: int, node_rank: int, host: str, priority: int) -> None:
        """Send one node of a placed gang to its host's own queue."""
        self.celery.send_task(
            NODE_TASK_NAME,
            args=[job_id, attempt, node_rank],
            queue=host_queue(host, self.settings.default_queue),
            priority=message_priority(priority, self.url),
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 1},
        )

    def _redis_client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)
        return self._redis

    def ping(self) -> None:
        """Raise unless the broker is reachable."""
        if _is_redis(self.url):
            self._redis_client().ping()
        elif self.url.startswith("filesystem://"):
            folder = filesystem_folders(self.settings.data_dir)["queue"]
            if not (folder.is_dir() and os.access(folder, os.W_OK)):
                raise OSError(f"broker folder {folder} is not a writable directory")
        else:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)

    def queue_depths(self, queues: list[str]) -> dict[str, int] | None:
        """Messages waiting per queue, measured at the broker; None when it cannot be measured."""
        if _is_redis(self.url):
            client = self._redis_client()
            pipe = client.pipeline()
            for q in queues:
                for pri in range(10):
                    pipe.llen(q if pri == 0 else f"{q}{REDIS_SEP}{pri}")
            counts = pipe.execute()
            return {q: int(sum(counts[i * 10 : (i + 1) * 10])) for i, q in enumerate(queues)}
        if self.url.startswith("filesystem://"):
            folder = filesystem_folders(self.settings.data_dir)["queue"]
            depths = dict.fromkeys(queues, 0)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return depths
            for name in names:
                queue = name.partition(".")[2].removesuffix(".msg")
                if queue in depths and name.endswith(".msg"):
                    depths[queue] += 1
            return depths
        return None

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self._celery is not None:
            self._celery.close()


class QueuedJob(Protocol):
    """What a wake-up message needs of a queued job (a `Job` row or a reaper's `QueuedJob`)."""

    id: str
    queue: str
    priority: int
    nodes: int


def needs_gang(broker: Broker, job: QueuedJob) -> bool:
    """A multi-node job placed on registered workers (not launched over SSH by one worker)."""
    return job.nodes > 1 and broker.settings.multinode_launcher == "workers"


def dispatch(repo: JobRepo, broker: Broker, job: QueuedJob) -> bool:
    """Send a queued job's wake-up message: mark it sent, send, and unmark it if the send fails.
    A multi-node job (with `multinode_launcher` workers) is placed instead (`place_gang`).

    Marked first, so that a reaper pass in between does not send a second message; a send that
    fails leaves the row unsent (`enqueued_at` NULL) and the reaper's next pass sends it, so a
    stored job is never stranded by a broker that was down. A process that dies between the
    mark and the send leaves a mark older than `unclaimed_requeue_s`, which the reaper resends
    too. A message that arrives twice only fails its second claim."""
    if needs_gang(broker, job):
        return place_gang(repo, broker, job)
    repo.mark_enqueued(job.id)
    try:
        broker.enqueue(job.id, job.queue, job.priority)
    except Exception as exc:
        log.warning("job %s: its wake-up message was not sent (the reaper retries): %s", job.id, exc)
        repo.mark_unsent(job.id)
        return False
    return True


def place_gang(repo: JobRepo, broker: Broker, job: QueuedJob) -> bool:
    """Reserve the job's gang (one transaction, all or nothing) and send node r's message to
    its worker's host queue. False while the job waits: no N free workers on distinct hosts
    (the reason is in the job's `error`); its `enqueued_at` stays NULL, so every reaper pass
    tries again. A send that fails leaves that node reserved and unstarted: node 0 gives the
    attempt up after `gang_start_timeout_s` (or the reaper does, when node 0 is the one
    missing) and the job is placed again."""
    settings = broker.settings
    # a worker missing three registry heartbeats is not given a node (it may have just died)
    placed = repo.reserve_gang(job.id, min(settings.stale_heartbeat_s, 3 * settings.heartbeat_interval_s))
    if not isinstance(placed, Gang):
        return False
    log.info(
        "job %s attempt %d placed on %s",
        job.id,
        placed.attempt,
        ", ".join(f"node {n.node_rank}: {n.worker} ({n.host})" for n in placed.nodes),
    )
    for node in placed.nodes:
        try:
            broker.enqueue_node(job.id, placed.attempt, node.node_rank, node.host, job.priority)
        except Exception as exc:
            log.warning("job %s: node %d's message was not sent: %s", job.id, node.node_rank, exc)
    return True


class Dispatcher:
    """Sends the wake-up messages of submitted jobs off the request path. The jobs row is the
    outbox entry (queued, `enqueued_at` NULL): a submit stores it and pokes the dispatcher, whose
    thread sends every unsent job at once (and every `interval_s` anyway). Several API processes
    each run one; `claim_sends` lets exactly one of them send a job. A send that fails unmarks the
    job and ends the pass: the next poke, pass or the reaper sends it."""

    def __init__(self, repo: JobRepo, broker: Broker, interval_s: float = 1.0):
        self.repo, self.broker, self.interval_s = repo, broker, interval_s
        self._wake, self._stop = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None
        self._pass = threading.Lock()  # one pass at a time: a drain() returns after any in flight

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sgmim-dispatcher", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self.drain()
            except Exception:
                log.exception("dispatcher pass failed (the next pass or the reaper retries)")

    def drain(self) -> int:
        """Send every unsent queued job; returns how many were sent."""
        with self._pass:
            return self._drain()

    def _drain(self) -> int:
        sent, tried = 0, set()
        while not self._stop.is_set():
            jobs = [job for job in self.repo.unsent_queued() if job.id not in tried]
            if not jobs:
                return sent
            tried.update(job.id for job in jobs)  # a gang that waits for workers stays unsent: once per pass
            singles = [job for job in jobs if not needs_gang(self.broker, job)]
            for job in jobs:
                if needs_gang(self.broker, job):
                    sent += place_gang(self.repo, self.broker, job)
            claimed = self.repo.claim_sends([job.id for job in singles])
            mine = [job for job in singles if job.id in claimed]
            done = self._send(mine)
            sent += done
            if done < len(mine):
                for unsent in mine[done:]:  # claimed by this pass, not sent: the next pass sends them
                    self.repo.mark_unsent(unsent.id)
                return sent
        return sent

    def _send(self, jobs: list[QueuedJob]) -> int:
        """Send the jobs' messages in order; returns how many left before the first failure."""
        sent = 0
        if not jobs:
            return sent
        try:
            with self.broker.producer() as producer:
                for job in jobs:
                    self.broker.enqueue(job.id, job.queue, job.priority, producer)
                    sent += 1
        except Exception as exc:
            failed = jobs[sent].id if sent < len(jobs) else "(after the last)"
            log.warning("job %s: wake-up message not sent (retried later): %s", failed, exc)
        return sent
