"""Group commit for submits: one writer thread stores every submit that arrived while it was
committing the previous ones, in one transaction.

A submit's CPU was mostly its own transaction (BEGIN, two INSERTs, COMMIT: on Postgres four
round trips, on SQLite a WAL commit), and 50 concurrent submits queued on SQLite's single
writer anyway. Batched, a transaction carries all waiting submits (`executemany`), and each
request still answers only after the commit that stored its job. A batch that fails is retried
one submit at a time, so one bad row fails only its own request.

Submits with an Idempotency-Key keep their own transaction (`JobRepo.submit`): the key's
check and insert must commit together with that one job.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from service.db.repo import JobRepo, NewJob

log = logging.getLogger("service.batcher")

_STOP = object()


class SubmitBatcher:
    def __init__(self, repo: JobRepo, max_batch: int = 200):
        self.repo, self.max_batch = repo, max_batch
        self._pending: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sgmim-submits", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Store what is pending, then end the thread."""
        self._pending.put(_STOP)
        if self._thread is not None:
            self._thread.join(30)

    def submit(self, spec: dict[str, Any], queue_name: str) -> Future[NewJob]:
        """The job of a validated spec, once committed."""
        done: Future[NewJob] = Future()
        self._pending.put((spec, queue_name, done))
        return done

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._pending.get()]
            while len(batch) < self.max_batch and not self._pending.empty():
                batch.append(self._pending.get_nowait())
            stopping = any(item is _STOP for item in batch)
            self._store([item for item in batch if item is not _STOP])

    def _store(self, batch: list[tuple[dict[str, Any], str, Future[NewJob]]]) -> None:
        if not batch:
            return
        try:
            jobs = self.repo.submit_many([(spec, queue_name) for spec, queue_name, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0][2].set_exception(exc)  # the request answers as its own transaction would
                return
            log.warning("a batch of %d submits failed; storing them one by one", len(batch), exc_info=True)
            for item in batch:
                self._store([item])
            return
        for (_, _, done), job in zip(batch, jobs, strict=True):
            done.set_result(job)
