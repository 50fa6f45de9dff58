"""The FastAPI app: `create_app(settings)`, and `app` for `uvicorn service.main:app`.

`create_app` does no I/O (it may read a token file); the lifespan opens the database, applies
the Alembic migrations, connects the broker and decides whether auth is on.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import errors, stopping
from service.auth import AuthState
from service.batcher import SubmitBatcher
from service.broker import Broker, Dispatcher
from service.db import migrate
from service.db.repo import JobRepo
from service.db.session import Database
from service.middleware import BodySizeLimitMiddleware, RequestMetricsMiddleware, TokenAuthMiddleware
from service.notify import housekeeping_once
from service.openapi import install_openapi
from service.reaper import reap_once
from service.routes import api_router, health
from service.settings import Settings
from service.studies import Studies
from service.telemetry import Telemetry
from service.web import install as install_web

log = logging.getLogger("service")

DESCRIPTION = """\
SG-MIM training service, REST API v1. Submit pretraining, fine-tuning and evaluation jobs,
follow their metrics and logs live (SSE), download checkpoints and read evaluation results;
post a study (a grid of pretrain → fine-tune → evaluate chains over methods, settings and seeds)
and read its results table.
Errors are JSON `{"detail": ...}`; when tokens are configured every route but `/healthz`
needs `Authorization: Bearer <token>`. The web dashboard is at `/`.
"""


async def _reaper_loop(repo: JobRepo, broker: Broker, settings: Settings) -> None:
    while True:
        await anyio.sleep(settings.reaper_interval_s)
        try:
            await run_in_threadpool(reap_once, repo, broker, settings)
        except Exception:
            log.exception("reaper pass failed")


async def _housekeeping_loop(repo: JobRepo, settings: Settings) -> None:
    """Webhooks and checkpoint retention for ended jobs (service/notify.py)."""
    with httpx.Client(follow_redirects=False) as http:
        while True:
            await anyio.sleep(settings.notify_interval_s)
            try:
                await run_in_threadpool(housekeeping_once, repo, settings, http)
            except Exception:
                log.exception("housekeeping pass failed")


async def _study_loop(studies: Studies, settings: Settings) -> None:
    """Advance the active studies: a cell's next job once its parent has succeeded."""
    while True:
        await anyio.sleep(settings.study_interval_s)
        try:
            await run_in_threadpool(studies.advance_active)
        except Exception:
            log.exception("study pass failed")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    telemetry = Telemetry()
    auth = AuthState(settings.configured_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database.from_settings(settings)
        if settings.migrate_on_start:
            await run_in_threadpool(migrate.upgrade, db.engine)
        repo = JobRepo(db)
        broker = Broker(settings)
        await run_in_threadpool(broker.prepare)
        auth.repo = repo
        auth.db_tokens = await run_in_threadpool(repo.has_active_tokens)
        telemetry.attach(repo, broker, settings.default_queue)
        settings.resolved_artifact_root.mkdir(parents=True, exist_ok=True)
        app.state.db, app.state.repo, app.state.broker = db, repo, broker
        app.state.dispatcher = dispatcher = Dispatcher(repo, broker)
        dispatcher.start()
        app.state.batcher = batcher = SubmitBatcher(repo)
        batcher.start()
        app.state.studies = studies = Studies(repo, broker, dispatcher, settings)
        stopping.watch_stop_signals()
        # Importing sgmim (torch, timm) leaves ~0.5 M long-lived objects; a full collection then
        # takes ~200 ms and lands on some request. Move them out of the collector's sight.
        gc.collect()
        gc.freeze()
        async with anyio.create_task_group() as tasks:
            if settings.reaper_in_api:
                tasks.start_soon(_reaper_loop, repo, broker, settings)
            tasks.start_soon(_housekeeping_loop, repo, settings)
            tasks.start_soon(_study_loop, studies, settings)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        batcher.stop()
        dispatcher.stop()
        broker.close()
        db.dispose()

    app = FastAPI(
        title="SG-MIM training service",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        debug=False,
        docs_url=None,  # served by service.web with local Swagger UI assets (works offline)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.auth = auth
    errors.install(app)
    app.include_router(health.router)
    app.include_router(api_router)
    install_web(app)
    install_openapi(app, settings.max_string_length)
    # Added last = outermost: metrics see every answer, auth runs before the body is read.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(TokenAuthMiddleware, auth=auth, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestMetricsMiddleware, telemetry=telemetry)
    return app


app = create_app()
