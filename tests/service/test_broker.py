"""Enqueue through a real Redis (database 11 of the `redis_server`, flushed), the Celery app's
deliberate settings, and the API's behaviour when the broker is down."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from service.main import create_app
from service.queue import make_celery, message_priority, queue_for
from tests.service.conftest import PRETRAIN, REDIS_DB, make_settings
from tests.services import RedisServer

JOBS = "/api/v1/jobs"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url(REDIS_DB)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_redis_enqueue_priorities_and_queue_depth(tmp_path, redis_url: str, redis_client: redis.Redis):
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", broker_url=redis_url)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/readyz").json()["checks"]["broker"] == "ok"
        low = client.post(JOBS, json={**PRETRAIN, "name": "low", "priority": 0}).json()["id"]
        mid = client.post(JOBS, json={**PRETRAIN, "name": "mid"}).json()["id"]
        high = client.post(JOBS, json={**PRETRAIN, "name": "high", "priority": 9}).json()["id"]
        gpu = client.post(JOBS, json={**PRETRAIN, "name": "gpu", "resources": {"gpu_type": "h100"}}).json()[
            "id"
        ]
        client.app.state.dispatcher.drain()  # the messages leave right after the submits
        # Redis serves priority 0 first: spec priority p travels as 9 - p
        assert redis_client.llen("sgmim") == 1 and redis_client.llen("sgmim:4") == 1
        assert redis_client.llen("sgmim:9") == 1 and redis_client.llen("sgmim.h100:4") == 1
        raw = json.loads(redis_client.lindex("sgmim", 0))
        args, kwargs, _ = json.loads(base64.b64decode(raw["body"]))
        assert args == [high] and kwargs == {} and raw["headers"]["task"] == "sgmim.run_job"
        metrics = client.get("/metrics").text
        assert 'sgmim_queue_depth{queue="sgmim",source="broker"} 3.0' in metrics
        assert 'sgmim_queue_depth{queue="sgmim.h100",source="broker"} 1.0' in metrics
    # a consumer gets them in priority order
    app = make_celery(settings)
    order = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("sgmim")
        for _ in range(3):
            message = queue.get(timeout=5)
            order.append(message.payload[0][0])
            message.ack()
        queue.close()
    assert order == [high, mid, low]
    assert gpu not in order


def test_broker_down_job_is_stored_and_readyz_says_so(tmp_path):
    settings = make_settings(
        tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", broker_url="redis://127.0.0.1:1/0"
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert r.json()["checks"]["database"] == "ok" and r.json()["checks"]["broker"].startswith(
            "unreachable"
        )
        r = client.post(JOBS, json=PRETRAIN)
        assert r.status_code == 201 and r.json()["status"] == "queued"
        client.app.state.dispatcher.drain()  # its send fails
        # not marked as sent: the dispatcher's next pass or the reaper sends its message (the
        # background pass marks it while it tries, so look between its tries)
        deadline = time.monotonic() + 15
        unsent: list[str] = []
        while not unsent and time.monotonic() < deadline:
            unsent = [q.id for q in client.app.state.repo.find_unclaimed_queued(3600)]
            time.sleep(0.05)
        assert unsent == [r.json()["id"]]
        assert 'sgmim_queue_depth{queue="sgmim",source="database"} 1.0' in client.get("/metrics").text


def test_celery_app_settings_are_deliberate(tmp_path):
    settings = make_settings(
        tmp_path, "sqlite://", broker_url="redis://127.0.0.1:6379/11", broker_visibility_timeout_s=86400
    )
    conf = make_celery(settings).conf
    assert conf.task_acks_late is True and conf.worker_prefetch_multiplier == 1
    assert conf.task_reject_on_worker_lost is False and conf.worker_concurrency == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss is False
    options = conf.broker_transport_options
    assert options["visibility_timeout"] == 86400 and options["priority_steps"] == list(range(10))
    assert options["queue_order_strategy"] == "priority"
    assert conf.task_default_queue == "sgmim" and conf.result_backend is None
    fs = make_celery(make_settings(tmp_path, "sqlite://")).conf.broker_transport_options
    assert fs["data_folder_in"] == fs["data_folder_out"] == str(tmp_path / "broker" / "queue")
    assert (tmp_path / "broker" / "control").is_dir()
    assert message_priority(9, "redis://x") == 0 and message_priority(0, "redis://x") == 9
    assert message_priority(7, "filesystem://") == 7
    assert queue_for(None) == "sgmim" and queue_for("a100") == "sgmim.a100"


class _RecordingBroker:
    """Stands in for the broker in `dispatch`: records what the row said while it was sent."""

    def __init__(self, repo, fail: bool):
        self.repo, self.fail = repo, fail
        self.marked_while_sending: list[bool] = []

    def enqueue(self, job_id: str, queue: str, priority: int) -> None:
        self.marked_while_sending.append(self.repo.get(job_id).enqueued_at is not None)
        if self.fail:
            raise ConnectionError("broker down")


@pytest.mark.parametrize("fail", [False, True])
def test_dispatch_marks_before_sending_and_unmarks_a_failed_send(repo, fail):
    from service.broker import dispatch
    from tests.service.conftest import submit_spec

    job = repo.get(submit_spec(repo))
    assert job.enqueued_at is None, "a stored job is unsent until dispatched"
    broker = _RecordingBroker(repo, fail)
    assert dispatch(repo, broker, job) is not fail
    assert broker.marked_while_sending == [True], "a reaper pass during the send must not resend it"
    unsent = {q.id for q in repo.find_unclaimed_queued(3600)}
    assert (job.id in unsent) is fail, "only a failed send is left for the reaper"


def test_the_service_imports_nothing_from_the_worker_package():
    """The queue contract belongs to the service: the API sends by task name and never imports
    the worker package (which depends on the service, not the other way round)."""
    import subprocess
    import sys

    code = ("import sys, service.main, service.broker, service.reaper, service.queue; "
            "print(sorted(m for m in sys.modules if m == 'worker' or m.startswith('worker.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
