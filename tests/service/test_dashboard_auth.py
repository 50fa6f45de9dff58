"""The dashboard's session cookie and the cross-site rules (TestClient; the browser side is in
tests/web). TestClient's requests come from http://testserver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.auth import CSRF_HEADER, SESSION_COOKIE, same_origin
from service.main import create_app
from tests.service.conftest import PRETRAIN, make_settings

JOBS = "/api/v1/jobs"
ORIGIN = "http://testserver"
PAGE = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture
def secured(tmp_path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}", api_tokens="s3cret")
    with TestClient(create_app(settings), raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


@pytest.fixture
def open_app(tmp_path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'db.sqlite'}")
    with TestClient(create_app(settings), raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


def sign_in(client: TestClient, token: str = "s3cret") -> None:
    r = client.post("/signin", data={"token": token, "next": "/workers"}, headers={"Origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/workers", r.text
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=s3cret;")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie


def test_same_origin():
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert same_origin("https://sgmim.example", "sgmim.example")  # behind a TLS proxy
    assert same_origin("http://localhost", "localhost:80")
    for origin, host in (
        ("http://127.0.0.1:8001", "127.0.0.1:8000"),
        ("http://evil.example", "127.0.0.1:8000"),
        ("null", "127.0.0.1:8000"),
        ("", "127.0.0.1:8000"),
        ("http://127.0.0.1:8000", ""),
        ("file://", "127.0.0.1:8000"),
    ):
        assert not same_origin(origin, host), (origin, host)


def test_pages_send_a_browser_to_sign_in_and_scripts_get_401(secured: TestClient):
    r = secured.get("/jobs/abc?x=1", headers=PAGE)
    assert r.status_code == 303 and r.headers["location"] == "/signin?next=%2Fjobs%2Fabc%3Fx%3D1"
    assert secured.get("/", headers={"Accept": "*/*"}).status_code == 401
    assert secured.get(JOBS, headers=PAGE).status_code == 401  # the API never redirects
    form = secured.get("/signin?next=/jobs/abc", headers=PAGE)
    assert form.status_code == 200 and 'name="token"' in form.text and "Sign out" not in form.text
    assert secured.get("/static/app.js").status_code == 200  # assets need no token
    assert secured.get("/vendor/plotly.min.js").status_code == 200


def test_sign_in_rejects_a_bad_token_and_foreign_next(secured: TestClient):
    r = secured.post("/signin", data={"token": "wrong", "next": "/"}, headers={"Origin": ORIGIN})
    assert (
        r.status_code == 401
        and "not valid" in r.text
        and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    )
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        r = secured.post("/signin", data={"token": "s3cret", "next": target}, headers={"Origin": ORIGIN})
        assert r.status_code == 303 and r.headers["location"] == "/", target
    r = secured.post("/signin", data={"token": "s3cret"}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_cookie_session_reads_and_needs_the_csrf_header_to_write(secured: TestClient):
    sign_in(secured)
    assert secured.get("/workers", headers=PAGE).status_code == 200
    assert secured.get(JOBS).status_code == 200
    job = secured.post(JOBS, json=PRETRAIN, headers={"Authorization": "Bearer s3cret"}).json()
    cancel = f"{JOBS}/{job['id']}/cancel"
    for headers in (
        {},
        {"Origin": ORIGIN},
        {CSRF_HEADER: "1"},
        {CSRF_HEADER: "1", "Origin": "http://evil.example"},
    ):
        r = secured.post(cancel, headers=headers)
        assert r.status_code == 403, headers
    assert secured.get(f"{JOBS}/{job['id']}").json()["status"] == "queued"
    r = secured.post(cancel, headers={CSRF_HEADER: "1", "Origin": ORIGIN})
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    # the dashboard's submit form follows the same rule
    body = {"spec_yaml": "kind: pretrain\nname: t\nconfig: {schedule: {epochs: 1}}\n"}
    assert secured.post("/submit", json=body, headers={"Origin": ORIGIN}).status_code == 403
    assert secured.post("/submit", json=body, headers={"Origin": ORIGIN, CSRF_HEADER: "1"}).status_code == 201


def test_a_stale_cookie_is_cleared_and_sign_out_ends_the_session(secured: TestClient):
    secured.cookies.set(SESSION_COOKIE, "revoked-or-wrong")
    r = secured.get("/", headers=PAGE)
    assert r.status_code == 303 and r.headers["location"].startswith("/signin")
    assert f"{SESSION_COOKIE}=;" in r.headers["set-cookie"]
    assert secured.get(JOBS).status_code == 401
    secured.cookies.clear()
    sign_in(secured)
    r = secured.post("/signout", headers={"Origin": ORIGIN})
    assert r.status_code == 303 and r.headers["location"] == "/signin"
    assert (
        f'{SESSION_COOKIE}=""' in r.headers["set-cookie"] or f"{SESSION_COOKIE}=;" in r.headers["set-cookie"]
    )
    assert secured.get("/", headers=PAGE).status_code == 303


def test_without_tokens_no_sign_in_but_cross_site_writes_are_refused(open_app: TestClient):
    assert open_app.get("/", headers=PAGE).status_code == 200
    assert open_app.get("/signin", headers=PAGE).headers["location"] == "/"
    job = open_app.post(JOBS, json=PRETRAIN).json()  # scripts send no Origin: unaffected
    cancel = f"{JOBS}/{job['id']}/cancel"
    assert open_app.post(cancel, headers={"Origin": "http://evil.example"}).status_code == 403
    assert open_app.post(cancel, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    r = open_app.post(
        JOBS, content=b'{"kind": "pretrain"}', headers={"Origin": "null", "Content-Type": "text/plain"}
    )
    assert r.status_code == 403
    assert open_app.get(f"{JOBS}/{job['id']}").json()["status"] == "queued"
    assert open_app.post(cancel, headers={"Origin": ORIGIN}).status_code == 202


def test_docs_use_local_assets(open_app: TestClient):
    html = open_app.get("/docs").text
    assert "/vendor/swagger-ui-bundle.js" in html and "/vendor/swagger-ui.css" in html
    assert "cdn" not in html.lower() and "https://" not in html
    for asset in ("/vendor/swagger-ui-bundle.js", "/vendor/swagger-ui.css", "/static/docs.js"):
        r = open_app.get(asset)
        assert r.status_code == 200 and len(r.content) > 400, asset
    assert open_app.get("/vendor/unknown.js").status_code == 404
