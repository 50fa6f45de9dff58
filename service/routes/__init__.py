"""One router per noun; `api_router` mounts them under /api/v1."""

from fastapi import APIRouter

from service.routes import (
    checkpoints,
    evaluation,
    events,
    health,
    jobs,
    logs,
    metrics,
    series,
    studies,
)

api_router = APIRouter(prefix="/api/v1")
for _module in (jobs, metrics, series, events, logs, checkpoints, evaluation, studies):
    api_router.include_router(_module.router)

__all__ = ["api_router", "health"]
