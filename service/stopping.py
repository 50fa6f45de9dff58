"""The API process has been told to stop: long-lived responses end now.

uvicorn's graceful shutdown waits for every open response to finish and, after
`timeout_graceful_shutdown`, cancels what is left, logging an error and a traceback per task. An
event stream of a running job never finishes by itself, so every stop of an API that a
`sgmim watch`, `sgmim logs -f` or a dashboard page was following took the whole timeout and
logged failures. The streams watch this flag instead and end at once; their clients resume
after the last event id they saw, from this server once it is back or from another one.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOPPING = threading.Event()
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _is_uvicorns(handler: Any) -> bool:
    owner = getattr(handler, "__self__", None)
    return owner is not None and type(owner).__module__.startswith("uvicorn.")


def watch_stop_signals() -> None:
    """Set STOPPING on SIGTERM / SIGINT, before uvicorn's own handler runs. Only where uvicorn
    has installed its handlers (a server process's main thread): an app under a test client
    keeps its signals as they are."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        previous = signal.getsignal(sig)
        if _is_uvicorns(previous):
            signal.signal(sig, _then(previous))


def _then(previous: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        STOPPING.set()
        previous(signum, frame)

    return handler
