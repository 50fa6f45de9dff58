"""Bearer tokens.

Tokens come from `SGMIM_API_TOKENS` / `SGMIM_TOKEN_FILE` (kept in memory as sha256 digests and
compared with `hmac.compare_digest` against every configured digest, no early exit) and from
the `api_tokens` table (sha256 lookups, revocable at run time). Auth is on when any token is
configured at start; then every route but `/healthz` needs `Authorization: Bearer <token>`.

The web dashboard signs a browser in once: the token goes into an HttpOnly, SameSite=Strict
cookie (`SESSION_COOKIE`), never into a URL or script-readable storage. A request authenticated
by that cookie is ambient (the browser adds it by itself), so an unsafe one (POST, ...) must also
carry the `X-SGMIM-CSRF` header, which a cross-site page cannot add without a CORS preflight we
never answer, and a same-origin `Origin`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import time
from urllib.parse import urlsplit

import anyio.to_thread

from service.db.repo import JobRepo

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
SESSION_COOKIE = "sgmim_session"
CSRF_HEADER = "X-SGMIM-CSRF"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _host_port(netloc: str, scheme: str) -> tuple[str, int | None]:
    parts = urlsplit(f"{scheme}://{netloc}")
    try:
        port = parts.port
    except ValueError:
        return netloc.lower(), None
    return (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def same_origin(origin: str, host: str) -> bool:
    """True when the `Origin` header names this server: the host and port of the `Host` header
    (read with the origin's scheme: behind a TLS-terminating proxy the server itself sees http)."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or not host:
        return False
    return _host_port(parts.netloc, parts.scheme) == _host_port(host, parts.scheme)


@functools.lru_cache(maxsize=256)  # asked on every request in the loopback mode, of a few hosts
def is_loopback(host: str) -> bool:
    """True for loopback addresses and names (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=256)
def is_non_loopback_ip(host: str) -> bool:
    """True only for a literal IP address that is not loopback (names are not judged)."""
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class AuthState:
    def __init__(self, tokens: list[str], repo: JobRepo | None = None, cache_s: float = 5.0):
        self._digests = [_digest(t) for t in tokens]
        self.repo = repo
        self.db_tokens = False
        self._cache: dict[bytes, float] = {}
        self._cache_s = cache_s

    @property
    def enabled(self) -> bool:
        return bool(self._digests) or self.db_tokens

    def _static_match(self, digest: bytes) -> bool:
        ok = False
        for d in self._digests:
            ok |= hmac.compare_digest(d, digest)
        return ok

    async def check(self, token: str) -> bool:
        digest = _digest(token)
        if self._static_match(digest):
            return True
        if not self.db_tokens or self.repo is None:
            return False
        now = time.monotonic()
        expiry = self._cache.get(digest)
        if expiry is not None and expiry > now:
            return True
        ok = await anyio.to_thread.run_sync(self.repo.token_hash_active, digest.hex())
        if ok:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = now + self._cache_s
        return ok
