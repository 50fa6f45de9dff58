"""Pure ASGI middlewares (they do not buffer streaming responses): request metrics, bearer
(or dashboard session cookie) auth with cross-site request refusal and, without tokens, the
loopback mode's guards; request body size limit."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import (
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    AuthState,
    is_loopback,
    is_non_loopback_ip,
    same_origin,
)

# signing in and out, and the dashboard's assets (public libraries and our own CSS/JS) need no token
OPEN_PATHS = frozenset({"/healthz", "/signin", "/signout", "/favicon.ico"})
OPEN_PREFIXES = ("/static/", "/vendor/")
API_PREFIX = "/api/v1"
CHALLENGE = {"www-authenticate": 'Bearer realm="sgmim"'}


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


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def _cross_site(headers: dict[str, str]) -> str | None:
    """Why an unsafe request comes from another site's page, or None. Browsers send `Origin`
    with every POST; the CLI and scripts send none, so they are not affected."""
    origin = headers.get("origin")
    if origin is not None and not same_origin(origin, headers.get("host", "")):
        return f"cross-site request refused (Origin {origin[:100]!r} is not this server)"
    if headers.get("sec-fetch-site") == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    return None


def wants_page(scope: Scope, headers: dict[str, str]) -> bool:
    """A browser navigating to a page (not a script calling the API)."""
    return (
        scope["method"] in ("GET", "HEAD")
        and "text/html" in headers.get("accept", "")
        and not scope["path"].startswith(API_PREFIX + "/")
    )


async def _to_sign_in(scope: Scope, send: Send, clear_cookie: bool = False) -> None:
    target = scope["path"] + (
        f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else ""
    )
    headers = [(b"location", f"/signin?next={quote(target, safe='')}".encode()), (b"content-length", b"0")]
    if clear_cookie:
        headers.append(
            (b"set-cookie", f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict".encode())
        )
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


class TokenAuthMiddleware:
    """Bearer auth on every path but /healthz, the sign-in page and the static assets when
    tokens are configured; a browser signed in through the dashboard presents the token in the
    session cookie instead, and its unsafe requests must carry the X-SGMIM-CSRF header and a
    same-origin Origin. An unsafe request whose Origin is another site is refused (403) in any
    case. Without tokens (the loopback mode) a browser on the same machine is the threat, so:
    - a request that reached the server on a non-loopback address is refused (403);
    - the Host header must name a loopback host, the address the server listens on, or one of
      `allowed_hosts` (400 otherwise: DNS rebinding);
    - a state-changing request whose Origin is not the server's own is refused (403);
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
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        unsafe = scope["method"] not in SAFE_METHODS
        if unsafe and (refusal := _cross_site(headers)) is not None:
            await send_json(send, 403, {"detail": refusal})
            return
        path = scope["path"]
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
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
        token, from_cookie = None, False
        if "authorization" in headers:
            scheme, _, rest = headers["authorization"].partition(" ")
            if scheme.lower() == "bearer" and rest.strip():
                token = rest.strip()
        elif (cookie := cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)) is not None:
            token, from_cookie = cookie, True
        if token is None:
            if wants_page(scope, headers):
                await _to_sign_in(scope, send)
                return
            await send_json(
                send, 401, {"detail": "missing bearer token (Authorization: Bearer <token>)"}, CHALLENGE
            )
            return
        if not await self.auth.check(token):
            if from_cookie and wants_page(scope, headers):
                await _to_sign_in(scope, send, clear_cookie=True)
                return
            await send_json(
                send,
                401,
                {"detail": "invalid bearer token" if not from_cookie else "session expired: sign in again"},
                {"www-authenticate": 'Bearer realm="sgmim", error="invalid_token"'},
            )
            return
        if from_cookie and unsafe:
            origin = headers.get("origin", "")
            if headers.get(CSRF_HEADER.lower()) is None or not same_origin(origin, headers.get("host", "")):
                await send_json(
                    send,
                    403,
                    {
                        "detail": f"a request signed in by the session cookie must carry the {CSRF_HEADER} "
                        "header and a same-origin Origin (or use Authorization: Bearer)"
                    },
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
