"""The studies pages in headless Chromium against the web stack's real API (the test plays the
worker through the repository: the jobs ask for a GPU type no worker serves). The list links to
the study; its page shows the grid of cells (a failed one with its error), the results table
and one bar chart per metric, escapes the study's text, links the cells' jobs, and reloads by
itself when a cell moves on; its Cancel button stops the study (shown cancelled, also in the
list) and its Retry button resumes it."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sgmim.spec.study import inline_study, load_study
from tests.service.study_worker import finish_due
from tests.web.conftest import ROOT, browsing_tab
from tests.worker.conftest import Stack, wait_for

pytestmark = pytest.mark.slow

JOBS = ROOT / "examples" / "jobs"
REPORTED = {("simmim", 0): (1.40, 0.30), ("simmim", 1): (1.52, 0.26),
            ("sgmim", 0): (1.31, 0.37), ("sgmim", 1): (1.47, 0.29)}
DESCRIPTION = "<b>not bold</b> & <script>alert(1)</script>"


@pytest.fixture
def tab(browser: Any, stack: Stack) -> Iterator[Any]:
    with browsing_tab(browser, stack.url) as browsing:
        yield browsing


def post_study(stack: Stack, tmp_path, name: str = "web-study") -> dict:
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "description": DESCRIPTION, "pretrain": str(JOBS / "pretrain-tiny.yaml"),
        "finetune": str(JOBS / "finetune-depth-tiny.yaml"),
        "evaluate": str(JOBS / "evaluate-depth-tiny.yaml"),
        "axes": {"method": ["simmim", "sgmim"]}, "seeds": [0, 1]}))
    body = inline_study(*load_study(path))
    for stage in ("pretrain", "finetune", "evaluate"):
        body[stage]["resources"] = {"gpu_type": "nowhere"}  # the stack's worker leaves them alone
    answer = stack.client.post("/api/v1/studies", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


def study(stack: Stack) -> dict:
    return stack.client.get("/api/v1/studies/web-study").json()


def play(stack: Stack, stage: str, expect: int, fail: frozenset[str] = frozenset()) -> None:
    """Finish the cells' queued `stage` jobs once the service has submitted `expect` of them."""
    current = wait_for(lambda: (s := study(stack)) and sum(
        c["stages"][stage]["status"] == "queued" for c in s["cells"]) == expect and s, 30,
        f"{expect} queued {stage} job(s)")
    finish_due(stack.repo, stack.settings, current, stage, REPORTED, fail)


def test_studies_list_and_study_page(stack: Stack, tab: Any, tmp_path):
    post_study(stack, tmp_path)
    play(stack, "pretrain", 4, fail=frozenset({"simmim-s1"}))
    play(stack, "finetune", 3)
    play(stack, "evaluate", 3)
    wait_for(lambda: not study(stack)["active"], 30, "the study to settle")

    page = tab.page
    tab.goto("/studies")
    row = page.locator("#studies tr", has_text="web-study")
    assert "<b>not bold</b> & <script>alert(1)</script>" in row.inner_text()  # shown as text
    row.locator("a", has_text="web-study").click()
    page.wait_for_url("**/studies/web-study")

    assert page.locator("#cells td.cell").count() == 4
    failed = page.locator("#cells td[data-cell='simmim-s1']").inner_text()
    assert "pretrain failed" in failed and "boom" in failed
    assert "evaluate succeeded" in page.locator("#cells td[data-cell='sgmim-s0']").inner_text()
    assert "1 stopped" in page.inner_text("#study-state")
    rmse = page.locator("table.results[data-metric='rmse'] tbody tr", has_text="sgmim").inner_text()
    mean, std = statistics.mean([1.31, 1.47]), statistics.stdev([1.31, 1.47])
    assert f"{mean:.4g} ± {std:.4g}" in rmse and "\t2\t" in rmse  # sgmim: both seeds
    simmim = page.locator("table.results[data-metric='rmse'] tbody tr", has_text="simmim").inner_text()
    assert "1.4 ± –\t1\tbaseline" in simmim  # one seed done: no spread
    page.wait_for_selector("#charts .chart[data-metric='delta1'] .main-svg")
    tab.shot("study")

    # the cell's links open its jobs
    evaluate = study(stack)["cells"][2]["stages"]["evaluate"]["job_id"]
    page.locator("#cells td[data-cell='sgmim-s0'] a", has_text="evaluate").click()
    page.wait_for_url(f"**/jobs/{evaluate}")

    # a retried cell: the page notices by itself
    tab.goto("/studies/web-study")
    page.wait_for_selector("#charts .chart")
    retried = stack.client.post("/api/v1/studies/web-study/retry", params={"cell": "simmim-s1"})
    assert retried.status_code == 200, retried.text
    deadline = time.monotonic() + 30
    while "pretrain queued" not in page.locator("#cells td[data-cell='simmim-s1']").inner_text():
        assert time.monotonic() < deadline, "the page did not reload"
        page.wait_for_timeout(500)
    assert "running" in page.inner_text("#study-state")


def test_cancel_and_retry_buttons(stack: Stack, tab: Any, tmp_path):
    from playwright.sync_api import expect

    post_study(stack, tmp_path, name="web-cancel")
    page = tab.page
    tab.goto("/studies/web-cancel")
    assert page.locator("#retry").is_hidden()
    page.locator("#cancel").click()
    expect(page.locator("#cells .s-cancelled")).to_have_count(4)
    answer = stack.client.get("/api/v1/studies/web-cancel").json()
    assert not answer["active"] and answer["stopped"] == 4 and answer["state"] == "cancelled"
    assert page.locator("#cancel").is_hidden() and "4 stopped" in page.inner_text("#study-state")
    assert page.locator("#study-state .s-cancelled").inner_text() == "cancelled"
    tab.shot("study-cancelled")
    tab.goto("/studies")
    assert page.locator("#studies tr", has_text="web-cancel").locator(".status").inner_text() == "cancelled"
    tab.goto("/studies/web-cancel")

    page.locator("#retry").click()
    expect(page.locator("#cells .s-queued")).to_have_count(4)
    assert stack.client.get("/api/v1/studies/web-cancel").json()["active"]
    assert page.locator("#cancel").is_visible() and "running" in page.inner_text("#study-state")
    assert "cancelled" not in page.inner_text("#study-state")
    assert stack.client.post("/api/v1/studies/web-cancel/cancel").status_code == 200


def test_an_unknown_study_is_a_404_page(stack: Stack, tab: Any):
    response = tab.goto("/studies/no-such-study")
    assert response.status == 404 and "no-such-study" in tab.page.inner_text("main")
    tab.console.expect(r"status of 404")
