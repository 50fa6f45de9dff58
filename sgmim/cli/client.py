"""A small HTTP client of REST API v1 for the CLI, and one-line error reporting.

Server URL and token come from flags, then the environment (`SGMIM_URL`, `SGMIM_TOKEN`), then
the config file (`$XDG_CONFIG_HOME/sgmim/config.yaml`, keys `url` and `token`), then
`http://127.0.0.1:$SGMIM_PORT` (the port `sgmim serve` listens on; 8000 unset).

Following a job (`events`) survives a restarting API: a cut stream or a refused connection is
retried with backoff for `SGMIM_RECONNECT_S` seconds (default 300), resuming by Last-Event-ID;
after that `LostContact` is raised, which the commands turn into exit code 3
(LOST_CONTACT_EXIT), distinct from the job's own outcome.
"""

from __future__ import annotations

import json
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import typer
import yaml
from rich.markup import escape

# bidirectional overrides and isolates reorder what a terminal shows (U+202A..E, U+2066..9)
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

DEFAULT_PORT = 8000
# `sgmim watch` / `logs -f` exit with this when the server stayed unreachable (the job's outcome
# is unknown); 0/1/2 are the job's own outcome (sgmim.status.WATCH_EXIT_CODES).
LOST_CONTACT_EXIT = 3
DEFAULT_RECONNECT_S = 300.0


def default_url() -> str:
    return f"http://127.0.0.1:{os.environ.get('SGMIM_PORT') or DEFAULT_PORT}"


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sgmim" / "config.yaml"


def resolve_connection(url: str | None, token: str | None) -> tuple[str, str | None]:
    """Flags win over the environment, which wins over the config file."""
    stored: dict[str, Any] = {}
    path = config_file()
    if path.is_file():
        try:
            stored = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            fail(f"{path} is not valid YAML: {exc}")
        if not isinstance(stored, dict):
            fail(f"{path} must hold a mapping with keys url and token")
    url = url or os.environ.get("SGMIM_URL") or stored.get("url") or default_url()
    token = token or os.environ.get("SGMIM_TOKEN") or stored.get("token")
    return url.rstrip("/"), token


def shown(value: object, *, lines: bool = False) -> str:
    """Text from the server made safe for a terminal: control characters (escape sequences,
    carriage returns, bidi overrides) appear as Python escapes (`\\x1b`); tabs stay, and
    newlines when `lines`."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ch if ch == "\t" or (lines and ch == "\n")
        else ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) == "Cc" or ch in _BIDI_CONTROLS
        else ch
        for ch in text
    )


def markup(value: object, *, lines: bool = False) -> str:
    """`shown`, and escaped for rich markup: a `[red]` in a job name is text, not a style."""
    return escape(shown(value, lines=lines))


def fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {shown(message, lines=True)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


class LostContact(Exception):
    """The server stayed unreachable for longer than the reconnect window."""


# What a restarting server looks like from here: retried while following a job.
TRANSIENT = (httpx.TransportError,)
TRANSIENT_STATUS = (502, 503, 504)


def describe_error(response: httpx.Response) -> str:
    """One readable line from an error response: field paths for validation errors."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text.strip()[:200] or response.reason_phrase}"
    detail = body.get("detail") if isinstance(body, dict) else body
    if response.status_code == 401:
        return token_hint(response.request.headers.get("authorization") is not None)
    if isinstance(detail, list) and any(_query_loc(item) for item in detail):
        return "; ".join(f"{_query_loc(item)}: {item.get('msg')}" for item in detail)
    if isinstance(detail, list):
        parts = []
        for item in detail:
            loc = [str(p) for p in item.get("loc", []) if p != "body"]
            parts.append(f"{'.'.join(loc)}: {item.get('msg')}" if loc else str(item.get("msg")))
        subject = "study" if "/studies" in response.request.url.path else "job spec"
        return f"invalid {subject}: {'; '.join(parts)}"
    return str(detail) if detail is not None else f"HTTP {response.status_code}"


def _query_loc(item: dict) -> str | None:
    loc = [str(p) for p in item.get("loc", [])]
    return f"--{loc[1]}" if len(loc) > 1 and loc[0] == "query" else None


def token_hint(sent: bool) -> str:
    if sent:
        return ("the server refused the API token; check --token or SGMIM_TOKEN "
                "(or `token` in the config file)")
    return ("the server needs an API token: pass --token TOKEN (before the command) or set SGMIM_TOKEN "
            "(or `token` in the config file)")


@dataclass
class Api:
    url: str
    token: str | None
    timeout: float = 30.0
    reconnect_s: float = field(default_factory=lambda: float(os.environ.get("SGMIM_RECONNECT_S")
                                                             or DEFAULT_RECONNECT_S))
    on_contact: Callable[[str], None] = field(default=lambda message: print(message, file=sys.stderr))

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=self.timeout)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ApiError(response.status_code, describe_error(response))
        return response

    def get(self, path: str, **params) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None, headers: dict | None = None) -> Any:
        return self.request("POST", path, json=body, headers=headers or {}).json()

    @contextmanager
    def stream(self, path: str, headers: dict | None = None, timeout: float | None = None):
        with self.http.stream("GET", path, headers=headers or {},
                              timeout=httpx.Timeout(self.timeout, read=timeout)) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, describe_error(response))
            yield response

    def retrying(self, call: Callable[[], Any]) -> Any:
        """call() again with backoff while the server is unreachable or restarting (502-504),
        for up to reconnect_s seconds; then LostContact."""
        lost_since: float | None = None
        delay = 0.5
        while True:
            try:
                result = call()
            except TRANSIENT as exc:
                reason = type(exc).__name__
            except ApiError as exc:
                if exc.status not in TRANSIENT_STATUS:
                    raise
                reason = f"HTTP {exc.status}"
            else:
                if lost_since is not None:
                    self.on_contact(f"reconnected to {self.url}")
                return result
            now = time.monotonic()
            if lost_since is None:
                lost_since = now
                self.on_contact(f"lost contact with {self.url} ({reason}); retrying for up to "
                                f"{self.reconnect_s:.0f} s")
            if now - lost_since >= self.reconnect_s:
                raise LostContact(f"lost contact with {self.url} for {now - lost_since:.0f} s "
                                  f"({reason}); the job's outcome is unknown")
            time.sleep(min(delay, max(0.0, self.reconnect_s - (now - lost_since)) + 0.01))
            delay = min(delay * 2, 10.0)

    def events(self, job_id: str, after: int = 0) -> Iterator[tuple[str, dict]]:
        """SSE events of a job as (type, data); ends after the final status event. A cut stream or
        an unreachable server is retried (see `retrying`), resuming after the last event id seen,
        so no event is lost or repeated across an API restart."""

        def open_stream() -> tuple[ExitStack, httpx.Response]:
            stack = ExitStack()
            headers = {"Last-Event-ID": str(after)} if after else {}
            response = stack.enter_context(self.stream(f"/jobs/{job_id}/events", headers=headers, timeout=60))
            return stack, response

        while True:
            stack, response = self.retrying(open_stream)
            with stack:
                try:
                    for kind, data, event_id in parse_sse(response.iter_lines()):
                        if event_id is not None:
                            after = event_id
                        yield kind, data
                        if kind == "status" and data.get("final"):
                            return
                except TRANSIENT:
                    continue  # reconnect (retrying reports a lasting outage)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict, int | None]]:
    kind, data, event_id = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield kind, json.loads("\n".join(data)), event_id
            kind, data, event_id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            elif field == "id" and value.isdigit():
                event_id = int(value)


@contextmanager
def api_errors(url: str, connect_code: int = 1) -> Iterator[None]:
    """Turn what can go wrong talking to the server into one line and a non-zero exit
    (`connect_code` for an unreachable server: LOST_CONTACT_EXIT while following a job)."""
    try:
        yield
    except LostContact as exc:
        fail(str(exc), code=LOST_CONTACT_EXIT)
    except ApiError as exc:
        fail(str(exc), code=2 if exc.status in (400, 404, 409, 413, 422) else 1)
    except httpx.ConnectError:
        fail(f"cannot reach the SG-MIM server at {url}. Start one with `sgmim serve --with-worker` "
             "(or set SGMIM_URL / --url to where it runs).", code=connect_code)
    except httpx.TimeoutException:
        fail(f"the server at {url} did not answer in time")
    except httpx.HTTPError as exc:
        fail(f"talking to {url}: {exc}")
