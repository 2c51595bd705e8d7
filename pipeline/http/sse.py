"""``GET /v1/tasks/{id}/events``: a job's status events as Server-Sent Events.

    id: 1234                       the event's id: stable, increasing per task
    event: status
    data: {"id": 1234, "seq": 5, "task_id": "...", "event": "stage_started",
           "status": "running", "stage": "gpu", "progress": 0.4, "at": "...",
           "error": null, "final": false, ...}     (pipeline.status.events, plus "final")

    event: end                     once the job is final (no id: a stream resumed after
    data: {...the final event...}  the final event gets only what came later, then this)

The stream replays the job's history after ``Last-Event-ID`` (the header an
``EventSource`` sends when it reconnects; ``?after=N`` does the same), then follows it live
until the event that makes it final, and closes with ``end``. A job produced but not yet
admitted streams nothing until the bridge admits it. A comment line every 15 s keeps
proxies from closing an idle stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from .metrics import STREAMS
from .store import TaskStore

#: Seconds between two reads of new events.
POLL_S = 0.5
#: Milliseconds a browser waits before reconnecting a dropped stream.
RETRY_MS = 2000


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


async def events(request: Request, store: TaskStore, task_id: str, tenant: str | None,
                 after_id: int, poll_s: float = POLL_S) -> AsyncIterator[ServerSentEvent]:
    last, first = after_id, True
    STREAMS.inc()
    try:
        while True:
            found = await anyio.to_thread.run_sync(store.events_after, task_id, last)
            for event in found:
                yield ServerSentEvent(data=_json(event), id=str(event["id"]), event="status",
                                      retry=RETRY_MS if first else None)
                first, last = False, event["id"]
                if event["final"]:
                    yield ServerSentEvent(data=_json(event), event="end")
                    return
            if found:
                continue
            # Nothing new: a job already final (resumed after its final event) ends here.
            view = await anyio.to_thread.run_sync(
                lambda: store.task(task_id, tenant, cached=False))
            if view is None:
                return
            if view["final"] and int(view.get("id") or 0) <= last:
                yield ServerSentEvent(data=_json(view), event="end")
                return
            await anyio.sleep(poll_s)
    finally:
        STREAMS.dec()


def response(request: Request, store: TaskStore, task_id: str, tenant: str | None,
             after_id: int) -> EventSourceResponse:
    return EventSourceResponse(events(request, store, task_id, tenant, after_id), ping=15,
                               headers={"Cache-Control": "no-store",
                                        "X-Accel-Buffering": "no"})
