"""Every read of job state the HTTP service makes, in one place.

    store.task(task_id, tenant)                 -> view dict | None
    store.events_after(task_id, after_id, n)    -> [event dict], ids increasing per task
    store.tasks(tenant, statuses, since, limit, cursor) -> ([view], next cursor | None)
    store.mark_submitted(task_id, tenant)       a job produced to Kafka, not admitted yet

A ``tenant`` of None reads every tenant's jobs (an operator); otherwise a job of another
tenant reads as absent. Views and events are plain JSON-ready dicts (times ISO 8601 UTC).

One job's state and events are the status events of :mod:`pipeline.status` (the outbox
of migration 0004): ``latest_status`` (the Redis cache for a final job, else
PostgreSQL) for a view,
``events_after`` for the stream; an event's ``id`` is its outbox id, stable and
increasing per task. Lists read the ``tasks`` table. A job the service produced but the
bridge has not admitted yet reads as ``status: "submitted"`` (a Redis key with an expiry).
"""

from __future__ import annotations

import base64
import json
import logging
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import Engine, text

from pipeline import status
from pipeline.state.status import FINAL, Status

log = logging.getLogger(__name__)

#: A produced job reads as ``submitted`` this long, or until the bridge admits it.
SUBMITTED_TTL_S = 3600
_SUBMITTED = "sonic:http:submitted:"
_FINAL = {s.value for s in FINAL}
_VIEW = """task_id, tenant, status, stage, progress, attempts, priority, engine, received_at,
           queued_at, started_at, finished_at, updated_at, error_code, error_message,
           result_key, callback_status"""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def view(row: dict[str, Any]) -> dict[str, Any]:
    """The public shape of a ``tasks`` row."""
    done = row["status"] == Status.COMPLETED.value and row.get("result_key")
    error = ({"code": row["error_code"], "message": row["error_message"]}
             if row.get("error_code") else None)
    return {
        "task_id": row["task_id"], "tenant": row["tenant"], "status": row["status"],
        "stage": row["stage"], "progress": row["progress"], "attempts": row["attempts"],
        "priority": row["priority"], "engine": row["engine"],
        "received_at": _iso(row["received_at"]), "queued_at": _iso(row["queued_at"]),
        "started_at": _iso(row["started_at"]), "finished_at": _iso(row["finished_at"]),
        "updated_at": _iso(row["updated_at"]), "error": error,
        "final": row["status"] in _FINAL, "callback_status": row["callback_status"],
        "video_url": f"/v1/tasks/{row['task_id']}/video" if done else None,
    }


class TaskStore:
    def __init__(self, db_engine: Engine, redis_client: redis.Redis) -> None:
        self.db_engine = db_engine
        self.redis = redis_client

    # --- one job ---------------------------------------------------------------------
    def task(self, task_id: str, tenant: str | None, *, cached: bool = True
             ) -> dict[str, Any] | None:
        """The job's latest status as a view, None when unknown or another tenant's.

        ``cached``: a final status comes from the Redis cache (it never changes again); a
        job still moving is read from PostgreSQL, since the cache trails the relay (by
        the whole outage while Kafka is down) and would show a stage already left."""
        latest = status.latest_status(self.db_engine, task_id,
                                      self.redis if cached else None)
        if cached and latest is not None and latest.get("status") not in _FINAL:
            latest = status.latest_status(self.db_engine, task_id)
        if latest is not None:
            return event_view(latest) if _visible(latest.get("tenant"), tenant) else None
        owner = self.submitted(task_id)
        if owner is None or not _visible(owner or None, tenant):
            return None
        return {"task_id": task_id, "tenant": owner or None, "status": "submitted",
                "event": None, "stage": None, "progress": 0.0, "final": False,
                "error": None, "video_url": None, "at": None, "timings": None}

    def events_after(self, task_id: str, after_id: int, limit: int = 500
                     ) -> list[dict[str, Any]]:
        """Status events of ``task_id`` with an id above ``after_id``, oldest first."""
        return [public_event(e) for e in status.events_after(self.db_engine, task_id,
                                                               after_id, limit)]

    def result_key(self, task_id: str) -> str | None:
        """The object key of the job's video (None before the upload stage)."""
        with self.db_engine.connect() as conn:
            return conn.execute(text("SELECT result_key FROM tasks WHERE task_id = :t"),
                                {"t": task_id}).scalar()

    # --- lists -----------------------------------------------------------------------
    def tasks(self, tenant: str | None, *, statuses: list[str] | None = None,
              tenant_filter: str | None = None, since: datetime | None = None,
              limit: int = 50, cursor: str | None = None
              ) -> tuple[list[dict[str, Any]], str | None]:
        """Jobs newest first (``received_at``, then ``task_id``), ``limit`` a page; the
        cursor names the last row of the previous page. Raises ValueError for a bad cursor."""
        where, params = ["TRUE"], {"n": limit + 1}
        if tenant is not None:
            where.append("tenant = :tenant")
            params["tenant"] = tenant
        if tenant_filter is not None:
            where.append("tenant = :tenant_filter")
            params["tenant_filter"] = tenant_filter
        if statuses:
            where.append("status = ANY(:statuses)")
            params["statuses"] = statuses
        if since is not None:
            where.append("received_at >= :since")
            params["since"] = since
        if cursor:
            at, last = decode_cursor(cursor)
            where.append("(received_at, task_id) < (:c_at, :c_id)")
            params.update(c_at=at, c_id=last)
        with self.db_engine.connect() as conn:
            rows = conn.execute(text(
                f"SELECT {_VIEW} FROM tasks WHERE {' AND '.join(where)} "
                "ORDER BY received_at DESC, task_id DESC LIMIT :n"), params).mappings().all()
        page = [view(dict(r)) for r in rows[:limit]]
        more = len(rows) > limit
        return page, (encode_cursor(rows[limit - 1]["received_at"], rows[limit - 1]["task_id"])
                      if more else None)

    # --- produced, not admitted yet ----------------------------------------------------
    def mark_submitted(self, task_id: str, tenant: str | None) -> None:
        """Best effort: without Redis a job reads as unknown until it is admitted."""
        try:
            self.redis.set(_SUBMITTED + task_id, tenant or "", ex=SUBMITTED_TTL_S)
        except redis.RedisError as exc:
            log.warning("cannot mark %s submitted: %s", task_id, exc)

    def submitted(self, task_id: str) -> str | None:
        """The tenant ('' for none) of a job produced but not admitted, else None."""
        try:
            value = self.redis.get(_SUBMITTED + task_id)
        except redis.RedisError:
            return None
        return value.decode() if value is not None else None


def _visible(owner: str | None, tenant: str | None) -> bool:
    return tenant is None or owner == tenant


def public_event(event: dict[str, Any]) -> dict[str, Any]:
    """A status event as the API shows it: ``final`` added; ``video_url`` is this service's
    own (authenticated) path, never the store's URL."""
    shown = dict(event)
    shown["final"] = event.get("event") in status.FINAL_EVENTS
    if shown.get("video_url"):
        shown["video_url"] = f"/v1/tasks/{event['task_id']}/video"
    return shown


def event_view(event: dict[str, Any]) -> dict[str, Any]:
    """The latest status event as a job's view: ``final`` tells the job's status."""
    shown = public_event(event)
    shown["final"] = event.get("status") in _FINAL
    return shown


def encode_cursor(at: datetime, task_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), task_id]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(at), str(task_id)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a cursor this service gave: {cursor[:40]!r}") from exc
