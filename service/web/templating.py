"""Jinja2 set-up of the dashboard: the templates, their filters and the page response."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from service.auth import CSRF_HEADER

HERE = Path(__file__).parent

# Every script and style comes from this server; scripts only from files (no inline code).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def format_time(value: dt.datetime | float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def job_duration(job: Any, now: dt.datetime | None = None) -> float | None:
    """Seconds from start to finish, or to now while it runs."""
    if job.started_at is None:
        return None
    end = job.finished_at or (now or dt.datetime.now(dt.UTC))
    return (end - job.started_at).total_seconds()


def format_bytes(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"


def progress_percent(job: Any) -> float | None:
    if job.status == "succeeded":
        return 100.0
    if not job.total_steps or job.step is None:
        return None
    return max(0.0, min(100.0, 100.0 * job.step / job.total_steps))


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters.update(
    time=format_time, duration=format_duration, bytes=format_bytes, number=format_number
)
templates.env.globals.update(
    job_duration=job_duration, progress_percent=progress_percent, csrf_header=CSRF_HEADER
)


def page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A rendered page with the dashboard's security headers."""
    context = {"auth_enabled": request.app.state.auth.enabled, **context}
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response
