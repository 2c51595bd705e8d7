"""The latest status in the real Redis: only ever newer, expiring, and PostgreSQL behind it."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Engine

from pipeline.scheduler import cancel
from pipeline.status import latest_status
from pipeline.status.cache import StatusCache, key
from pipeline.status.relay import Relay
from tests.pipeline.status.conftest import Jobs
from tests.support.server import free_port

pytestmark = pytest.mark.integration


def _event(task: str, seq: int, status: str) -> dict[str, object]:
    return {"schema_version": 1, "id": seq, "seq": seq, "task_id": task, "status": status}


def test_the_cache_only_moves_to_a_newer_event(status_redis: redis.Redis) -> None:
    cache = StatusCache(status_redis, 60)
    assert cache.put([_event("a", 1, "queued"), _event("a", 3, "running"),
                      _event("a", 2, "queued"), _event("b", 1, "queued")]) == 2
    assert cache.get("a")["seq"] == 3 and cache.get("b")["seq"] == 1
    assert cache.put([_event("a", 2, "queued")]) == 0  # a relay re-reading older events
    assert cache.get("a")["status"] == "running"
    assert cache.put([_event("a", 3, "running"), _event("b", 5, "completed")]) == 2
    assert cache.get("b")["status"] == "completed"
    status_redis.set(key("c"), b"not json")  # a foreign value is replaced, not trusted
    assert cache.put([_event("c", 1, "queued")]) == 1
    assert cache.get("missing") is None


def test_backlog_jobs_are_not_cached(status_redis: redis.Redis) -> None:
    """The broker's Redis must not grow with the PostgreSQL backlog: received and waiting
    jobs are left to PostgreSQL; the first status past the backlog is cached."""
    cache = StatusCache(status_redis, 60)
    backlog = [_event(f"bk{i}", 1, status) for i, status in
               enumerate(["received", "waiting", "received", "waiting"])]
    assert cache.put(backlog) == 0
    assert [cache.get(f"bk{i}") for i in range(4)] == [None] * 4
    assert cache.put([_event("bk0", 2, "waiting"), _event("bk1", 2, "received"),
                      _event("bk2", 2, "queued"), _event("bk3", 2, "cancelled")]) == 2
    assert cache.get("bk0") is None and cache.get("bk1") is None
    assert cache.get("bk2")["status"] == "queued" and cache.get("bk3")["status"] == "cancelled"


def test_the_cached_status_expires(status_redis: redis.Redis) -> None:
    cache = StatusCache(status_redis, 1)
    cache.put([_event("short", 1, "rejected")])
    assert 0 < status_redis.pttl(key("short")) <= 1000
    time.sleep(1.2)
    assert cache.get("short") is None


def test_latest_status_reads_the_cache_then_postgres(jobs: Jobs, db_engine: Engine,
                                                     status_redis: redis.Redis,
                                                     unique: str) -> None:
    task = f"latest-{unique}"
    jobs.admit(task)
    relay = Relay(db_engine, jobs.topic, lambda events: [True] * len(events),
                  StatusCache(status_redis, 1), prune_s=3600)
    assert relay.drain() == 1
    assert status_redis.get(key(task)) is None  # in the backlog: not cached
    assert latest_status(db_engine, task, status_redis)["event"] == "admitted"  # PostgreSQL
    cancel.cancel(db_engine, [task])  # not relayed yet: nothing cached, PostgreSQL answers
    assert latest_status(db_engine, task, status_redis)["event"] == "cancelled"
    assert status_redis.get(key(task)) is None
    relay.drain()
    cached = latest_status(db_engine, task, status_redis)
    assert (cached["event"], cached["seq"]) == ("cancelled", 2)
    time.sleep(1.2)  # expired: PostgreSQL answers the same
    assert status_redis.get(key(task)) is None
    assert latest_status(db_engine, task, status_redis) == cached
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    assert latest_status(db_engine, task, down) == cached  # Redis down: PostgreSQL
    assert latest_status(db_engine, f"nobody-{unique}", status_redis) is None
