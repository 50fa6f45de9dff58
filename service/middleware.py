"""Pure ASGI middlewares (they do not buffer streaming responses): request metrics, bearer
auth (and the loopback mode's guards), request body size limit."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import AuthState, is_loopback, is_non_loopback_ip

OPEN_PATHS = frozenset({"/healthz"})
API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _hostname(host: str) -> str:
    """`127.0.0.1:8000` -> `127.0.0.1`, `[::1]:8000` -> `::1`, lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def has_json_body(scope: Scope) -> bool:
    """True unless the request carries a body that is not declared JSON."""
    length = _header(scope, b"content-length")
    chunked = (_header(scope, b"transfer-encoding") or "").lower() == "chunked"
    if not chunked and (length is None or length.strip() in ("", "0")):
        return True
    kind = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


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
    """Bearer auth on every path but /healthz when tokens are configured. Without tokens (the
    loopback mode) a browser on the same machine is the threat, so:
    - a request that reached the server on a non-loopback address is refused (403);
    - the Host header must name a loopback host, the address the server listens on, or one of
      `allowed_hosts` (400 otherwise: DNS rebinding);
    - a state-changing request (not GET/HEAD/OPTIONS) whose Origin is not the server's own is
      refused (403: cross-site request forgery);
    - a body must be JSON (415: a cross-site `text/plain` form post needs no preflight).
    Same-origin pages (the dashboard at /) keep working: their Origin is the Host they load from."""

    def __init__(self, app: ASGIApp, auth: AuthState, allowed_hosts: list[str] | None = None):
        self.app, self.auth = app, auth
        self.allowed_hosts = frozenset(h.strip().lower() for h in allowed_hosts or [] if h.strip())

    def _loopback_refusal(self, scope: Scope) -> tuple[int, str] | None:
        server = scope.get("server")
        host = _header(scope, b"host") or ""
        name = _hostname(host)
        bound = str(server[0]).lower() if server else None
        # no Host at all: not a browser (they always send one), so not a rebinding attack
        if name and not (is_loopback(name) or name == bound or name in self.allowed_hosts):
            return 400, (f"Host {host[:100]!r} is not served without an API token; use 127.0.0.1 or "
                         "localhost, or add the name to SGMIM_ALLOWED_HOSTS")
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        origin = _header(scope, b"origin")
        if origin is not None and origin.split("://", 1)[-1].rstrip("/").lower() != host.strip().lower():
            return 403, "cross-origin requests that change state are refused without an API token"
        if not has_json_body(scope):
            return 415, "request bodies must be JSON (Content-Type: application/json)"
        return None

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
            refusal = self._loopback_refusal(scope)
            if refusal is not None:
                await send_json(send, refusal[0], {"detail": refusal[1]})
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
