"""`sgmim serve` and `sgmim worker`: run the service's programs (`python -m service`,
`python -m worker`) in place of this process, so that signals reach them directly. The ML
library does not import service or worker code; it only starts them."""

from __future__ import annotations

import os
import sys

import typer


def _exec_module(module: str, args: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


def serve(
    host: str = typer.Option(None, "--host", help="bind address (default 127.0.0.1, or SGMIM_HOST)"),
    port: int = typer.Option(None, "--port", help="bind port (default 8000, or SGMIM_PORT)"),
    with_worker: bool = typer.Option(False, "--with-worker",
                                     help="also start one local worker (the all-in-one embedded mode)"),
) -> None:
    """Run the REST API (applies database migrations first)."""
    args = [*(["--host", host] if host else []), *(["--port", str(port)] if port is not None else [])]
    _exec_module("service", [*args, *(["--with-worker"] if with_worker else [])])


def worker(
    queues: str = typer.Option(None, "--queues", "-Q",
                               help="comma-separated queues (default: the default queue, 'sgmim')"),
    concurrency: int = typer.Option(None, "--concurrency", help="jobs at once (default 1 per box)"),
    name: str = typer.Option(None, "--name", help="worker name recorded on the jobs it claims"),
) -> None:
    """Run a Celery worker that claims jobs and supervises their training runs."""
    args = [*(["--queues", queues] if queues else []),
            *(["--concurrency", str(concurrency)] if concurrency else []),
            *(["--name", name] if name else [])]
    _exec_module("worker", args)
