"""Pure ASGI middlewares (they do not buffer streaming responses): request metrics, bearer
auth, request body size limit."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import AuthState, is_non_loopback_ip

OPEN_PATHS = frozenset({"/healthz"})
API_PREFIX = "/api/v1"


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimitMiddleware:
    """413 for a body over `max_bytes`: at once from Content-Length, else while it is read."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    await send_json(send, 400, {"detail": "invalid Content-Length"})
                    return
                if too_big:
                    await send_json(send, 413, {"detail": f"request body larger than {self.max_bytes} bytes"})
                    return
        received = 0
        limit = self.max_bytes

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body larger than {limit} bytes")
            return message

        await self.app(scope, limited, send)


class TokenAuthMiddleware:
    """Bearer auth on every path but /healthz when tokens are configured. Without tokens, a
    request that reached the server on a non-loopback address is refused (403): the server
    must not be exposed unauthenticated, however it was started."""

    def __init__(self, app: ASGIApp, auth: AuthState):
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.auth.enabled:
            server = scope.get("server")
            if server and is_non_loopback_ip(str(server[0])):
                await send_json(
                    send,
                    403,
                    {
                        "detail": "no API token is configured, so the API only "
                        "answers on loopback addresses; set SGMIM_API_TOKENS"
                    },
                )
                return
            await self.app(scope, receive, send)
            return
        token = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, rest = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and rest.strip():
                    token = rest.strip()
                break
        challenge = {"www-authenticate": 'Bearer realm="sgmim"'}
        if token is None:
            await send_json(
                send, 401, {"detail": "missing bearer token (Authorization: Bearer <token>)"}, challenge
            )
            return
        if not await self.auth.check(token):
            await send_json(
                send,
                401,
                {"detail": "invalid bearer token"},
                {"www-authenticate": 'Bearer realm="sgmim", error="invalid_token"'},
            )
            return
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts requests and their latency by method, route template and status."""

    def __init__(self, app: ASGIApp, telemetry: Any):
        self.app, self.telemetry = app, telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def wrapped(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is None:
                template = "unmatched"
            elif scope["path"].startswith(API_PREFIX + "/") and not route.startswith(API_PREFIX + "/"):
                template = API_PREFIX + route  # routers under api_router report their own path
            else:
                template = route
            self.telemetry.observe_request(
                scope.get("method", "?"), template, status, time.perf_counter() - start
            )
