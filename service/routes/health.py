"""/healthz (process up), /readyz (database and broker reachable), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.deps import BrokerDep, RepoDep
from service.routes.common import AUTH
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness (no auth)", openapi_extra={"security": []})
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: database and broker reachable",
    responses={503: {"model": Readiness, "description": "a dependency is unreachable"}, **AUTH},
)
def readyz(repo: RepoDep, broker: BrokerDep) -> JSONResponse:
    checks: dict[str, str] = {}
    for name, probe in (("database", repo.ping), ("broker", broker.ping)):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"unreachable: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    body = Readiness(status="ready" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **AUTH},
)
def prometheus(request: Request) -> Response:
    return Response(generate_latest(request.app.state.telemetry.registry), media_type=CONTENT_TYPE_LATEST)
