"""/api/v1/jobs/{id}/events: Server-Sent Events (status, metric and log events).

Each event's `id` is its sequence number in the job; reconnecting with `Last-Event-ID: N`
(or `?after=N`) delivers exactly the events after N, in order. When the job has ended and
every event is delivered, a last `status` event with `"final": true` and no `id` (a summary,
not a new event: resuming never replays it) closes the stream. A client that connects after
the job ended thus receives the whole history and then the final status.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, HTTPException, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.db.events import Event
from service.db.repo import JobRepo
from service.deps import RepoDep, SettingsDep
from service.routes.common import AUTH, INVALID, NOT_FOUND, JobIdDep
from service.schemas import ErrorOut
from service.stopping import STOPPING
from sgmim.status import TERMINAL

router = APIRouter(prefix="/jobs", tags=["events"], responses=AUTH)

BATCH = 500
MAX_SEQ = 2**62


def format_event(event: Event) -> str:
    data = json.dumps({"seq": event.seq, **event.data}, separators=(",", ":"), allow_nan=False)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n"


async def event_stream(
    repo: JobRepo, job_id: str, after: int, poll_s: float, keepalive_s: float
) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    last_sent = time.monotonic()
    while True:
        batch = await run_in_threadpool(repo.events, job_id, after, BATCH)
        events, status, last_seq = batch.events, batch.status, batch.last_seq
        for event in events:
            yield format_event(event)
            after = event.seq
        if events:
            last_sent = time.monotonic()
            continue
        if STOPPING.is_set():
            return  # the client resumes after `after`, here once the server is back or elsewhere
        if status in TERMINAL and after >= last_seq:
            final = json.dumps({"status": status, "final": True, "last_seq": last_seq}, separators=(",", ":"))
            yield f"event: status\ndata: {final}\n\n"
            return
        if time.monotonic() - last_sent >= keepalive_s:
            yield ": keepalive\n\n"
            last_sent = time.monotonic()
        await anyio.sleep(poll_s)


SSE_EVENT_SCHEMA = {
    "type": "object",
    "description": "one SSE event: `data` is JSON; `id` is the sequence number (absent on the final "
    "status event)",
    "properties": {
        "event": {"type": "string", "enum": ["status", "metric", "log"]},
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "retry": {"type": "integer"},
    },
}


@router.get(
    "/{job_id}/events",
    summary="Live events (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "text/event-stream of `status`, `metric` and `log` events",
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        },
        **NOT_FOUND,
        **INVALID,
        503: {"model": ErrorOut, "description": "the server is stopping: retry (another server, or this "
              "one once it is back), resuming with Last-Event-ID"},
    },
)
async def stream_events(
    job_id: JobIdDep,
    repo: RepoDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str,
        Header(pattern=r"^[0-9]{0,18}$", description="resume after this event id (a sequence number)"),
    ] = "",
    after: Annotated[
        int, Query(ge=0, le=MAX_SEQ, description="resume after this sequence number (Last-Event-ID wins)")
    ] = 0,
) -> StreamingResponse:
    if STOPPING.is_set():
        raise HTTPException(503, "the server is stopping; retry", headers={"Retry-After": "1"})
    if last_event_id:
        after = int(last_event_id)
    # Checked before the response starts, so that an unknown job is a plain JSON 404.
    await run_in_threadpool(repo.get, job_id)
    stream = event_stream(repo, job_id, after, settings.sse_poll_interval_s, settings.sse_keepalive_s)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
