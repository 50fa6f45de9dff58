"""Prometheus metrics of the API (one registry per app)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.broker import Broker
from service.db.repo import JobRepo

log = logging.getLogger("service.telemetry")


class JobsCollector(Collector):
    """At scrape time: jobs by status (database) and queue depth (broker when it can be
    measured: Redis LLEN or the filesystem broker's files; else queued jobs in the database)."""

    def __init__(self, repo: JobRepo, broker: Broker, default_queue: str):
        self.repo, self.broker, self.default_queue = repo, broker, default_queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("sgmim_jobs", "Jobs by status (database)", labels=["status"])
        depth = GaugeMetricFamily(
            "sgmim_queue_depth",
            "Messages waiting per queue; source=broker when "
            "measured at the broker, database when counted from queued jobs",
            labels=["queue", "source"],
        )
        try:
            for status, n in self.repo.count_by_status().items():
                jobs.add_metric([status], n)
            db_queues = self.repo.queued_queues()
        except Exception as exc:  # a scrape must not fail because the DB is down
            log.warning("metrics: database unavailable: %s", exc)
            db_queues = None
        yield jobs
        queues = sorted({self.default_queue, *(db_queues or {})})
        measured = None
        try:
            measured = self.broker.queue_depths(queues)
        except Exception as exc:
            log.warning("metrics: broker unavailable: %s", exc)
        if measured is not None:
            for q in queues:
                depth.add_metric([q, "broker"], measured.get(q, 0))
        elif db_queues is not None:
            for q in queues:
                depth.add_metric([q, "database"], db_queues.get(q, 0))
        yield depth


class Telemetry:
    def __init__(self) -> None:
        self._jobs: JobsCollector | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sgmim_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "sgmim_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def attach(self, repo: JobRepo, broker: Broker, default_queue: str) -> None:
        """(Re)bind the scrape-time collector to this app start's repo and broker."""
        if self._jobs is not None:
            self.registry.unregister(self._jobs)
        self._jobs = JobsCollector(repo, broker, default_queue)
        self.registry.register(self._jobs)
