"""Signing in to the dashboard when tokens are configured: the token is taken once and kept in
an HttpOnly, SameSite=Strict cookie; pages and the API then work with the cookie; a cross-site
POST is refused; signing out ends it. A real uvicorn with SGMIM_API_TOKENS and headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.auth import SESSION_COOKIE
from tests.service.conftest import free_port
from tests.web.conftest import TOKEN, SecuredApi, browsing_tab

pytestmark = pytest.mark.slow

SPEC = {"kind": "pretrain", "name": "queued-only", "config": {"schedule": {"epochs": 1}}}


@pytest.fixture
def tab(browser: Any, secured: SecuredApi) -> Iterator[Any]:
    with browsing_tab(browser, secured.url) as browsing:
        yield browsing


def submit(secured: SecuredApi) -> str:
    r = secured.client.post("/api/v1/jobs", json=SPEC)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def status(secured: SecuredApi, job_id: str) -> str:
    return secured.client.get(f"/api/v1/jobs/{job_id}").json()["status"]


def test_sign_in_cookie_cancel_and_sign_out(secured: SecuredApi, tab: Any):
    page = tab.page
    job_id = submit(secured)
    tab.goto(f"/jobs/{job_id}")
    assert page.url.startswith(f"{secured.url}/signin?next=")  # not signed in: the sign-in page
    page.fill("input[name=token]", "wrong")
    with page.expect_response(lambda r: r.url.endswith("/signin") and r.request.method == "POST"):
        page.click("section.signin button")
    tab.console.expect(r"status of 401")
    assert "not valid" in page.inner_text("#signin-error")
    tab.shot("signin")

    page.fill("input[name=token]", TOKEN)
    page.click("section.signin button")
    page.wait_for_url(f"{secured.url}/jobs/{job_id}")  # back where the browser wanted to go
    assert TOKEN not in page.url
    [cookie] = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.evaluate("document.cookie") == ""  # no script can read it
    assert page.evaluate("localStorage.length + sessionStorage.length") == 0

    # the page's own POST (cookie + CSRF header + same Origin) works
    page.wait_for_selector("#cancel:not([hidden])")
    page.click("#cancel")
    page.wait_for_selector("#job-status:text-is('cancelled')")
    assert status(secured, job_id) == "cancelled"

    # /docs works signed in, from this server's assets
    tab.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title")

    # signing out clears the cookie: pages ask to sign in again
    tab.goto("/")
    page.click("header form.signout button")
    page.wait_for_url(f"{secured.url}/signin")
    assert [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE] == []
    tab.goto("/workers")
    assert page.url.startswith(f"{secured.url}/signin?next=")


def test_cross_site_posts_are_refused(secured: SecuredApi, tab: Any):
    page = tab.page
    victim = submit(secured)
    tab.goto("/signin")
    page.fill("input[name=token]", TOKEN)
    page.click("section.signin button")
    page.wait_for_url(f"{secured.url}/")

    # A page of another origin on the same site (another port: the SameSite=Strict cookie is
    # still sent) posts a form and a no-cors fetch to the API.
    evil = f"http://127.0.0.1:{free_port()}/evil"
    target = f"{secured.url}/api/v1/jobs/{victim}/cancel"
    page.route(
        evil,
        lambda route: route.fulfill(
            content_type="text/html",
            body=f"""<!doctype html>
        <form id=f method=post action="{target}"></form>""",
        ),
    )
    page.goto(evil)
    # (Chromium may block this one itself: Local Network Access; if it goes out, we refuse it)
    tab.console.expect(r"loopback. address space|net::ERR_FAILED|status of 403")
    page.evaluate(
        f"fetch({target!r}, {{method: 'POST', mode: 'no-cors', credentials: 'include'}})"
        ".then(() => 'sent', (error) => String(error))"
    )
    assert status(secured, victim) == "queued"
    with page.expect_response(target) as answer:
        page.evaluate("document.getElementById('f').submit()")
    assert answer.value.status == 403
    assert "cross-site" in answer.value.text()
    tab.console.expect(r"status of 403")
    assert status(secured, victim) == "queued"

    # A request that carries the cookie but not the CSRF header is refused, even same-origin;
    # with the header and the same Origin it passes.
    cookie = {SESSION_COOKIE: next(c["value"] for c in page.context.cookies() if c["name"] == SESSION_COOKIE)}
    with httpx.Client(base_url=secured.url, cookies=cookie) as browser_like:
        assert browser_like.get("/api/v1/jobs").status_code == 200
        refused = browser_like.post(f"/api/v1/jobs/{victim}/cancel", headers={"Origin": secured.url})
        assert refused.status_code == 403 and "X-SGMIM-CSRF" in refused.json()["detail"]
        no_origin = browser_like.post(f"/api/v1/jobs/{victim}/cancel", headers={"X-SGMIM-CSRF": "1"})
        assert no_origin.status_code == 403
        assert status(secured, victim) == "queued"
        ok = browser_like.post(
            f"/api/v1/jobs/{victim}/cancel", headers={"Origin": secured.url, "X-SGMIM-CSRF": "1"}
        )
        assert ok.status_code == 202 and ok.json()["status"] == "cancelled"
    # scripts with the bearer token are not affected
    assert secured.client.post(f"/api/v1/jobs/{submit(secured)}/cancel").status_code == 202
