"""Fixtures of the dashboard tests: a real uvicorn API with a real worker (the embedded stack:
SQLite and the filesystem broker), a second API with tokens, and headless Chromium.

The browser is Debian's `chromium`, driven by Playwright's Python client (never `playwright
install`). Without it the tests are skipped with the reason, except under CI=true, where that is
a failure: CI installs it (.ci/run). Screenshots go to $SGMIM_TEST_ARTIFACTS/web (default
tests/artifacts/web).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.db.repo import JobRepo
from service.db.session import Database
from service.settings import Settings
from tests.service.conftest import start_uvicorn
from tests.service.conftest import stop as stop_uvicorn
from tests.worker.conftest import WORKER_ENV, Stack, clean_env

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("SGMIM_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "dashboard-test-token"


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("SGMIM_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts") / "web"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.isfile(CHROMIUM) or not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}: CI must run the browser tests")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Console:
    """Console errors and uncaught exceptions of a page; `expect` allows a message pattern."""

    errors: list[str] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)

    def expect(self, pattern: str) -> None:
        self.allowed.append(re.compile(pattern))

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.allowed)]


@dataclass
class Browsing:
    page: Any
    console: Console
    url: str

    def goto(self, path: str) -> Any:
        return self.page.goto(self.url + path, wait_until="domcontentloaded")

    def shot(self, name: str, full_page: bool = True) -> Path:
        path = artifacts_dir() / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


def open_page(browser: Any, url: str) -> tuple[Any, Browsing]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    console = Console()

    def on_console(message: Any) -> None:
        if message.type == "error":
            console.errors.append(f"{message.text} @ {message.location.get('url')}")

    page.on("console", on_console)
    page.on("pageerror", lambda error: console.errors.append(f"uncaught: {error}"))
    return context, Browsing(page, console, url)


@contextmanager
def browsing_tab(browser: Any, url: str) -> Iterator[Browsing]:
    """A fresh browser context on `url`; leaving it checks that the page logged no unexpected
    console error."""
    context, browsing = open_page(browser, url)
    try:
        yield browsing
        assert browsing.console.unexpected() == [], "console errors"
    finally:
        context.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + one worker on the embedded defaults (as `sgmim serve --with-worker`)."""
    folder = tmp_path_factory.mktemp("web")
    database_url = f"sqlite:///{folder / 'sgmim.db'}"
    settings = Settings(data_dir=folder / "data", database_url=database_url)
    env = clean_env(SGMIM_DATA_DIR=str(settings.data_dir), SGMIM_DATABASE_URL=database_url, **WORKER_ENV)
    api, url = start_uvicorn(settings, log=folder / "api.log")
    db = Database.from_settings(settings)
    st = Stack("embedded", settings, url, env, JobRepo(db), httpx.Client(base_url=url, timeout=30), folder)
    try:
        st.start_worker("web-w1")
        yield st
    finally:
        for worker in st.workers:
            worker.kill9()
        st.client.close()
        stop_uvicorn(api)
        db.dispose()


@dataclass
class SecuredApi:
    url: str
    client: httpx.Client  # with the bearer token
    repo: JobRepo


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredApi]:
    """An API with a token configured (no worker: its jobs stay queued)."""
    folder = tmp_path_factory.mktemp("web-secured")
    settings = Settings(data_dir=folder / "data", database_url=f"sqlite:///{folder / 'sgmim.db'}")
    api, url = start_uvicorn(
        settings, env_extra={"SGMIM_API_TOKENS": TOKEN}, log=folder / "api.log", ready_path="/healthz"
    )
    db = Database.from_settings(settings)
    client = httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        yield SecuredApi(url, client, JobRepo(db))
    finally:
        client.close()
        stop_uvicorn(api)
        db.dispose()
