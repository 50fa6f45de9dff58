"""Submit under load (issue 14, finding 10): the wake-up message leaves the request path. The
job row is the outbox entry; the API's dispatcher sends it right after, and of several
dispatchers (one per API process) exactly one sends each job."""

from __future__ import annotations

import threading
import time

from service.broker import Broker, Dispatcher
from tests.service.conftest import PRETRAIN, Api, broker_messages, submit_spec

JOBS = "/api/v1/jobs"


def test_a_slow_broker_does_not_hold_the_submit(api: Api, monkeypatch):
    broker = api.client.app.state.broker
    send = broker.enqueue

    def slow_send(*args, **kwargs):
        time.sleep(2.0)
        send(*args, **kwargs)

    monkeypatch.setattr(broker, "enqueue", slow_send)
    start = time.perf_counter()
    r = api.client.post(JOBS, json={**PRETRAIN, "name": "fast"})
    elapsed = time.perf_counter() - start
    assert r.status_code == 201 and elapsed < 1.5, elapsed
    assert [m["args"] for m in api.messages()] == [[r.json()["id"]]], "sent right after, once"


def test_a_broker_that_is_down_leaves_the_job_for_the_next_pass(api: Api, monkeypatch):
    broker = api.client.app.state.broker
    send = broker.enqueue

    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(broker, "enqueue", down)
    r = api.client.post(JOBS, json={**PRETRAIN, "name": "later"})
    assert r.status_code == 201
    assert api.messages() == [] and [j.id for j in api.repo.unsent_queued()] == [r.json()["id"]]
    monkeypatch.setattr(broker, "enqueue", send)
    assert [m["args"] for m in api.messages()] == [[r.json()["id"]]]


def test_several_dispatchers_send_each_job_exactly_once(api: Api):
    jobs = {submit_spec(api.repo, name=f"j{i}") for i in range(60)}
    brokers = [Broker(api.settings) for _ in range(3)]  # one per API process
    dispatchers = [Dispatcher(api.repo, broker) for broker in brokers]
    threads = [threading.Thread(target=d.drain) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for broker in brokers:
        broker.close()
    deadline = time.monotonic() + 10  # and the app's own dispatcher's pass, if it took some
    while len(api.messages()) < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.1)
    sent = [m["args"][0] for m in broker_messages(api.settings)]
    assert sorted(sent) == sorted(jobs)
