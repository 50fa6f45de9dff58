"""`python -m worker [--queues Q1,Q2] [--concurrency N] [--name NAME]`: the Celery worker that
claims jobs and supervises their training runs (what `sgmim worker` and `sgmim serve
--with-worker` run).

Defaults: the default queue (`sgmim`; a GPU box adds `sgmim.<gpu_type>`: `--queues
sgmim,sgmim.h100`), concurrency 1 (one job per box: a job takes all the box's GPUs), prefetch 1,
the prefork pool (the parent process stays free to answer the health check's ping while a child
supervises a run), node name `<name>@<hostname>` (the compose health check looks for
`...@<hostname>`; a `--name` that contains `@` is used as it is). Settings come from the
`SGMIM_*` environment (service/settings.py). The database is migrated once, before the pool
forks.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from typing import TYPE_CHECKING

from service.queue import host_queue
from service.settings import Settings

if TYPE_CHECKING:
    from worker.tasks import Identity


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--queues",
        "-Q",
        default=None,
        help="comma-separated queues (default: the default queue, SGMIM_DEFAULT_QUEUE)",
    )
    parser.add_argument("--concurrency", "-c", type=int, default=1, help="jobs at once (default 1)")
    parser.add_argument(
        "--name",
        "-n",
        default="sgmim",
        help="node name; `@<hostname>` is appended unless it has an @ (default sgmim)",
    )
    parser.add_argument("--loglevel", "-l", default="INFO")
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    return args


def node_name(name: str) -> str:
    return name if "@" in name else f"{name}@%h"  # Celery expands %h to the host name


def worker_queues(args: argparse.Namespace, settings: Settings) -> list[str]:
    """The queues asked for, plus the host's own queue when multi-node jobs are placed on workers."""
    queues = [q.strip() for q in (args.queues or settings.default_queue).split(",") if q.strip()]
    if settings.multinode_launcher == "workers":
        own = host_queue(worker_host(settings), settings.default_queue)
        if own not in queues:
            queues.append(own)
    return queues


def worker_host(settings: Settings) -> str:
    return settings.worker_host or socket.gethostname()


def identity(args: argparse.Namespace, settings: Settings) -> Identity:
    from worker.tasks import Identity

    queues = worker_queues(args, settings)
    host = worker_host(settings)
    prefix = settings.default_queue + "."
    own = host_queue(host, settings.default_queue)
    gpu_types = [q.removeprefix(prefix) for q in queues if q.startswith(prefix) and q != own]
    return Identity(host=host, address=settings.node_addr or host, queues=queues, gpu_types=gpu_types)


def celery_argv(args: argparse.Namespace, settings: Settings) -> list[str]:
    queues = worker_queues(args, settings)
    return [
        "worker",
        "--loglevel",
        args.loglevel,
        "--pool",
        "prefork",
        "--concurrency",
        str(args.concurrency),
        "--prefetch-multiplier",
        "1",
        "--queues",
        ",".join(queues),
        "--hostname",
        node_name(args.name),
        "--without-mingle",  # no revoke/clock sync at start: the database owns job state
        "--without-gossip",
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.loglevel.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = Settings()

    from service.db import open_repo
    from service.queue import make_celery

    open_repo(settings).db.dispose()  # migrate once, before the pool forks
    app = make_celery(settings)
    import worker.tasks  # (registers sgmim.run_job, sgmim.run_node and the signal handlers)

    worker.tasks.identity = identity(args, settings)

    app.worker_main(celery_argv(args, settings))


if __name__ == "__main__":
    main()
