"""A status event as readers see it: the outbox row's body with its ``id`` and ``seq``.

    {"schema_version": 1, "id": 812, "seq": 7, "task_id": "3f6c...",
     "event": "stage_succeeded", "status": "running", "stage": "gpu", "progress": 0.9,
     "attempt": 1, "at": "2026-11-30T07:01:02.345+00:00",
     "error": null | {"code": "image.no_face", "message": "..."},
     "timings": {"received_at", "queued_at", "started_at", "finished_at": ISO time | null,
                 "duration_s": seconds of the stage run the event ends | null},
     "video_url": "https://..." | null, "tenant": "..." | null, "detail": {...} | null}

``id`` is the outbox row id (grows in commit order per task; the Server-Sent Events id),
``seq`` counts the task's events from 1 with no gap. ``event`` is one of :data:`EVENTS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: The body's schema version (a consumer should check it).
SCHEMA_VERSION = 1

#: Events telling a status change (named by the new status; ``released``: a waiting job
#: became runnable), then progress, then the stage events of ``task_events``.
STATUS_EVENTS = ("admitted", "rejected", "waiting", "released", "queued", "running",
                 "completed", "failed", "cancelled", "expired")
STAGE_EVENTS = ("stage_started", "stage_succeeded", "stage_failed", "stage_retrying",
                "stage_requeued", "stage_lease_lost", "stage_waiting_for_credential",
                "stage_credential_acquired")
EVENTS = STATUS_EVENTS + ("progress",) + STAGE_EVENTS

#: Events after which nothing changes a job's status any more.
FINAL_EVENTS = frozenset({"completed", "failed", "rejected", "cancelled", "expired"})

StatusEvent = dict[str, Any]


def from_row(row: Mapping[str, Any]) -> StatusEvent:
    """An outbox row (``id``, ``seq``, ``body``) as the event readers get."""
    body = dict(row["body"])
    return {"schema_version": body.pop("schema_version", SCHEMA_VERSION), "id": int(row["id"]),
            "seq": int(row["seq"]), **body}


def encode(event: StatusEvent) -> bytes:
    """The event as compact UTF-8 JSON (the Kafka value and the cached value)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes | str) -> StatusEvent:
    """The inverse of :func:`encode`; raises ``ValueError`` on bad JSON."""
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("a status event is a JSON object")
    return value
