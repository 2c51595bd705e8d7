"""The latest status of each job, cached in Redis with an expiry.

    sonic:status:<task_id>  ->  the newest event (JSON, :mod:`pipeline.status.events`)

Written by the relay, one Lua script per batch: a key only moves to a higher ``seq`` (a
relay that re-reads older events, or a second relay after a failover, never puts an
older status back); each write renews the expiry (``SONIC_STATUS_CACHE_TTL_S``).
Jobs still in the backlog (``received``, ``waiting``) are not cached: the cache shares the
broker's Redis, whose memory must stay bounded by the in-flight window and not grow with a
backlog of a million rows; PostgreSQL answers for them.
:func:`latest_status` reads it and falls back to PostgreSQL on a miss or a Redis error.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis
from sqlalchemy import Engine

from pipeline.status import outbox
from pipeline.status.events import StatusEvent, decode, encode

log = logging.getLogger(__name__)

PREFIX = "sonic:status:"

#: Statuses of jobs in the PostgreSQL backlog: their events are not cached.
BACKLOG = frozenset({"received", "waiting"})

#: KEYS: one per event; ARGV: ttl, then (seq, value) per key. Returns the keys written.
_PUT = """
local ttl = tonumber(ARGV[1])
local written = 0
for i, key in ipairs(KEYS) do
  local seq = tonumber(ARGV[2 * i])
  local old = redis.call('GET', key)
  local old_seq = -1
  if old then
    local ok, value = pcall(cjson.decode, old)
    if ok and type(value) == 'table' and tonumber(value['seq']) then
      old_seq = tonumber(value['seq'])
    end
  end
  if seq >= old_seq then
    redis.call('SET', key, ARGV[2 * i + 1], 'EX', ttl)
    written = written + 1
  end
end
return written
"""


def key(task_id: str) -> str:
    return PREFIX + task_id


class StatusCache:
    """The cache over ``client`` (errors: ``redis.RedisError``)."""

    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client, self.ttl_s = client, max(1, int(ttl_s))
        self._put = client.register_script(_PUT)

    def put(self, events: Iterable[StatusEvent]) -> int:
        """Cache the newest of ``events`` per task (kept when the cache holds a newer
        ``seq``; events of backlog jobs skipped); how many keys were written."""
        newest: dict[str, StatusEvent] = {}
        for event in events:
            if event.get("status") in BACKLOG:
                continue
            held = newest.get(event["task_id"])
            if held is None or event["seq"] >= held["seq"]:
                newest[event["task_id"]] = event
        if not newest:
            return 0
        args: list[object] = [self.ttl_s]
        for event in newest.values():
            args += [event["seq"], encode(event)]
        return int(self._put(keys=[key(t) for t in newest], args=args))

    def get(self, task_id: str) -> StatusEvent | None:
        raw = self.client.get(key(task_id))
        return decode(raw) if raw is not None else None


def latest_status(db_engine: Engine, task_id: str,
                  client: redis.Redis | None = None) -> StatusEvent | None:
    """The latest status event of ``task_id``: from the Redis cache when it holds the task
    (``client`` given and answering), else from PostgreSQL (the outbox's newest row, or the
    task row of a job older than the outbox). None: no such task. Raises the database
    driver's errors only."""
    if client is not None:
        try:
            raw = client.get(key(task_id))
            if raw is not None:
                return decode(raw)
        except (redis.RedisError, ValueError) as exc:
            log.warning("status cache: %s; reading PostgreSQL", exc)
    return outbox.latest(db_engine, task_id)
