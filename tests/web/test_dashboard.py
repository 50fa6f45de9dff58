"""The dashboard in headless Chromium against a real API and worker: the list, a live job
(curves gain points, the log follows, cancel), submit errors, compare, workers and the docs;
no console error on any page. Screenshots: tests/artifacts/web (or $SGMIM_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.conftest import browsing_tab
from tests.worker.conftest import Stack, tiny_spec, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def tab(browser: Any, stack: Stack) -> Iterator[Any]:
    with browsing_tab(browser, stack.url) as browsing:
        yield browsing


def loss_points(page: Any) -> int:
    """Points of the `loss` curve drawn in the job page's losses chart."""
    raw = page.evaluate("document.getElementById('chart-loss')?.dataset.points ?? null")
    return json.loads(raw).get("loss", 0) if raw else 0


def test_live_job_list_curves_log_and_cancel(stack: Stack, tab: Any):
    job_id = stack.submit(tiny_spec(steps=2000, name="web-live"))
    page = tab.page
    tab.goto("/")
    row = page.locator(f"tr[data-id='{job_id}']")
    row.wait_for()
    assert "web-live" in row.inner_text()
    # the list refreshes by itself: the row turns running without a reload
    page.wait_for_selector(f"tr[data-id='{job_id}'][data-status='running']", timeout=90_000)

    tab.goto(f"/jobs/{job_id}")
    wait_for(lambda: loss_points(page) >= 2, 90, "the loss curve to be drawn")
    first = loss_points(page)
    wait_for(lambda: loss_points(page) >= first + 3, 60, "the loss curve to gain points without a reload")
    wait_for(lambda: "step" in page.inner_text("#log"), 30, "the log to show training lines")
    assert page.inner_text("#job-status") == "running"
    page.wait_for_timeout(500)
    tab.shot("job-running")

    page.click("#cancel")
    page.wait_for_selector("#job-status:text-is('cancelled')", timeout=60_000)
    assert stack.wait_status(job_id, "cancelled", 30)["status"] == "cancelled"
    assert page.is_visible("#resume") and not page.is_visible("#cancel")

    tab.goto("/")
    page.wait_for_selector(f"tr[data-id='{job_id}'][data-status='cancelled']")
    tab.shot("jobs")


BAD_SPEC = """kind: pretrain
name: web-bad
config:
  schedule:
    epochs: -1
  optim:
    base_lr: 1.0e-3
    warmup_epochs: 0
"""


def test_submit_shows_the_field_path_error_then_opens_the_job(stack: Stack, tab: Any):
    page = tab.page
    tab.goto("/submit")
    page.fill("#spec", BAD_SPEC)
    with page.expect_response(lambda r: r.url.endswith("/submit") and r.request.method == "POST") as answer:
        page.click("#submit-button")
    assert answer.value.status == 422
    tab.console.expect(r"status of 422")  # Chromium logs every 4xx fetch answer
    error = page.locator("#error-rows tr.field-error").first
    error.wait_for()
    cells = error.locator("td").all_inner_texts()
    assert cells[0] == "5" and cells[1] == "config.schedule.epochs" and "greater than 0" in cells[2]
    tab.shot("submit-error")
    # a queue no worker consumes: the job stays queued and shows in the workers page's queue
    page.fill("#spec", BAD_SPEC.replace("epochs: -1", "epochs: 1") + "resources: {gpu_type: nowhere}\n")
    page.click("#submit-button")
    page.wait_for_url(f"{stack.url}/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    assert stack.job(job_id)["status"] == "queued"
    assert page.inner_text("h1").startswith("web-bad")

    tab.goto("/workers")
    assert job_id in page.inner_text("#queue")
    tab.shot("workers")


def add_curves(stack: Stack, name: str, guidance: bool, points: int, rmse: float) -> str:
    """A finished job as the worker would record it: `points` loss / lr points and an evaluation."""
    spec = tiny_spec(name=name)
    spec["config"]["model"]["guidance"]["enabled"] = guidance
    spec["resources"] = {"gpu_type": "nowhere"}
    job_id = stack.submit(spec)
    scale = 1.0 if guidance else 1.15
    batch = []
    for step in range(1, points + 1):
        batch.append({"name": "loss", "value": scale * (0.3 + 2.0 / (1 + step / 500)), "step": step})
        batch.append({"name": "lr", "value": 1e-3 * (1 - step / points), "step": step})
        if len(batch) >= 20_000:
            stack.repo.append_metrics(job_id, batch)
            batch = []
    stack.repo.append_metrics(job_id, batch)
    # claimed only now: the test stack's reaper calls a claim lost after 6 s without a heartbeat
    attempt = stack.repo.claim_job(job_id, "bench-worker")
    stack.repo.set_evaluation(
        job_id,
        {
            "task": "depth",
            "dataset": "synthetic",
            "split": "val",
            "num_images": 16,
            "metrics": {"rmse": rmse, "abs_rel": rmse / 10},
        },
    )
    assert stack.repo.finish_job(job_id, attempt, "succeeded")
    return job_id


def test_compare_overlays_two_jobs_downsampled(stack: Stack, tab: Any):
    sgmim = add_curves(stack, "cmp-sgmim", True, 100_000, 0.61)
    simmim = add_curves(stack, "cmp-simmim", False, 3_000, 0.74)
    page = tab.page
    with page.expect_response(lambda r: f"/jobs/{sgmim}/series" in r.url) as answer:
        tab.goto(f"/compare?jobs={sgmim},{simmim}")
    body = answer.value.json()
    assert body["curves"]["loss"]["points"] == 100_000 and body["curves"]["loss"]["downsampled"]
    assert len(body["curves"]["loss"]["steps"]) <= 1500
    table = page.inner_text("#compare-jobs")
    assert "cmp-sgmim" in table and "cmp-simmim" in table and "0.61" in table and "0.74" in table

    def drawn_curves() -> dict[str, int]:
        raw = page.evaluate("document.getElementById('chart-loss')?.dataset.points ?? null")
        return json.loads(raw) if raw else {}

    drawn = wait_for(lambda: len(drawn_curves()) == 2 and drawn_curves(), 20, "both jobs' loss curves")
    assert set(drawn) == {"cmp-sgmim · loss", "cmp-simmim · loss"}
    assert 0 < drawn["cmp-sgmim · loss"] <= 1500 and drawn["cmp-simmim · loss"] <= 1500
    assert "downsampled" in page.inner_text("#curves-note")
    page.wait_for_timeout(400)
    tab.shot("compare")

    # the list's check boxes lead to the same view
    tab.goto("/?q=cmp-")
    for job_id in (sgmim, simmim):
        page.check(f"tr[data-id='{job_id}'] input.pick")
    page.click("#compare-selected")
    page.wait_for_url("**/compare?jobs=*")
    assert set(page.url.split("jobs=")[1].replace("%2C", ",").split(",")) == {sgmim, simmim}


def test_list_filters_and_docs_work_offline(stack: Stack, tab: Any):
    page = tab.page
    tab.goto("/?status=succeeded&q=CMP-SIM")
    names = page.locator("#job-rows tr td:nth-child(4) a").all_inner_texts()
    assert names and all(n == "cmp-simmim" for n in names)
    # /docs: Swagger UI from this server (a request to any other host would fail: none is reachable)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    tab.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "SG-MIM training service" in page.inner_text(".swagger-ui .info .title")
    assert requests and all(r.startswith(stack.url) for r in requests), requests
    tab.shot("docs", full_page=False)
