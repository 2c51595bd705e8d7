"""The relay: publishes a topic's status events from the outbox to Kafka, in order per
task, and caches each task's latest status in Redis.

    hold the topic's advisory lock (one active relay per topic; the others stand by)
    read the oldest unpublished events (id order: per task, commit order)
    cache the newest per task
    send them in waves: each task's first event, wait for the acks, then each task's
        second one ... (a task's next event leaves only once Kafka has the one before)
    mark published the events Kafka has
    Kafka down: back off (1 s, then every 2 s: each try is cheap, and events wait
        no longer than that once Kafka is back), keep the cache current, try again
    every minute: prune published events past retention, and drop events of any topic
        that waited for Kafka past ``unpublished_max_age_s`` (a task's newest is kept)

Nothing here blocks or fails a stage: the stages' transactions only insert outbox rows
(the triggers of migration 0004). Delivery is at least once: an event whose ack was lost
is sent again, after the ones before it, never before; a consumer drops a ``seq`` it saw.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from pipeline.settings import Settings
from pipeline.state.advisory import SessionLock
from pipeline.status import metrics, outbox
from pipeline.status.cache import StatusCache
from pipeline.status.events import StatusEvent
from pipeline.status.sink import KafkaSink, producer_factory

log = logging.getLogger(__name__)

#: ``publish(events)`` -> per event, whether Kafka has it (:meth:`KafkaSink.publish`).
Publish = Callable[[Sequence[StatusEvent]], list[bool]]


def waves(events: Sequence[StatusEvent]) -> list[list[StatusEvent]]:
    """``events`` (id order) in waves: the first wave holds each task's first event, the
    second each task's second one, and so on."""
    out: list[list[StatusEvent]] = []
    seen: dict[str, int] = {}
    for event in events:
        index = seen.get(event["task_id"], 0)
        seen[event["task_id"]] = index + 1
        if index == len(out):
            out.append([])
        out[index].append(event)
    return out


def publish_in_order(publish: Publish, events: Sequence[StatusEvent]) -> list[int]:
    """Send ``events`` wave by wave (:func:`waves`) and return the ids Kafka has. A task's
    event is sent only once Kafka acknowledged the one before it, so a refused event is
    never overtaken by a later one (Kafka's own ordering does not survive an expired
    batch). The first wave with a refusal ends the pass: Kafka is down or refusing."""
    ids: list[int] = []
    for wave in waves(events):
        done = publish(wave)
        ids += [event["id"] for event, ok in zip(wave, done) if ok]
        if not all(done):
            break
    return ids


class Relay:
    """Relay ``topic``'s outbox (see the module docstring). ``cache`` may be None."""

    def __init__(self, db_engine: Engine, topic: str, publish: Publish,
                 cache: StatusCache | None = None, *, batch: int = 500, idle_s: float = 0.2,
                 retention_s: float = 86400.0, prune_s: float = 60.0,
                 backoff_max_s: float = 2.0,
                 unpublished_max_age_s: float = 7 * 86400.0) -> None:
        self.db, self.topic, self.publish, self.cache = db_engine, topic, publish, cache
        self.batch, self.idle_s, self.retention_s = batch, idle_s, retention_s
        self.prune_s, self.backoff_max_s = prune_s, backoff_max_s
        self.unpublished_max_age_s = unpublished_max_age_s
        self.key = f"sonic-status-relay:{topic}"
        self.lock = SessionLock(db_engine, self.key, on_take=self._taken,
                                on_drop=lambda: metrics.ACTIVE.labels(self.topic).set(0))
        self._backoff = 0.0
        self._next_prune = 0.0
        self._next_count = 0.0

    # --- the loop ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set; then release the lock. Errors are logged, never raised."""
        try:
            while not stop.is_set():
                try:
                    if not self.lock.hold():
                        stop.wait(1.0)
                        continue
                    sent, left = self.once()
                except Exception as exc:  # noqa: BLE001 - the relay outlives any outage
                    # PostgreSQL failed: the lock's session may be gone, let another take
                    # over. Kafka failed: every bridge shares that Kafka, so keep the role
                    # (a standby taking it would only reorder who waits).
                    if isinstance(exc, SQLAlchemyError):
                        self.lock.drop()
                    self._wait(stop, f"{type(exc).__name__}: "
                                     f"{(str(exc).splitlines() or [''])[0]}")
                    continue
                if left:
                    metrics.FAILURES.labels(self.topic).inc()
                    self._keep_cache_current()
                    self._wait(stop, f"{left} events not acknowledged by Kafka")
                    continue
                self._backoff = 0.0
                if sent < self.batch:
                    stop.wait(self.idle_s)
        finally:
            self.lock.drop()

    @property
    def active(self) -> bool:
        """Whether this relay holds the topic's lock (the active one)."""
        return self.lock.held

    def once(self) -> tuple[int, int]:
        """One batch: (events published, events left unpublished by a Kafka failure)."""
        self._upkeep()
        with self.db.connect() as conn:
            events = outbox.pending(conn, self.topic, self.batch)
        if not events:
            return 0, 0
        self._cache(events)
        ids = publish_in_order(self.publish, events)
        if ids:
            with self.db.begin() as conn:
                outbox.mark_published(conn, ids)
            metrics.PUBLISHED.labels(self.topic).inc(len(ids))
        return len(ids), len(events) - len(ids)

    def drain(self, timeout_s: float = 30.0) -> int:
        """Publish until nothing is pending (tests, one-off runs); the events published."""
        total, end = 0, time.monotonic() + timeout_s
        while time.monotonic() < end:
            sent, left = self.once()
            total += sent
            if not sent and not left:
                return total
        raise TimeoutError(f"status relay: {self.topic} not drained in {timeout_s} s")

    # --- helpers ----------------------------------------------------------------------
    def _cache(self, events: Sequence[StatusEvent]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.put(events)
        except redis.RedisError as exc:  # the cache is a convenience: Kafka goes on
            log.warning("status relay: cache not written: %s", exc)

    def _keep_cache_current(self) -> None:
        """Kafka is down: the cache still gets each task's newest event."""
        try:
            with self.db.connect() as conn:
                self._cache(outbox.latest_pending(conn, self.topic))
        except Exception as exc:  # noqa: BLE001 - best effort while Kafka is down
            log.warning("status relay: cache refresh failed: %s", exc)

    def _upkeep(self) -> None:
        now = time.monotonic()
        if now >= self._next_count:
            self._next_count = now + 5.0
            with self.db.connect() as conn:
                metrics.PENDING.labels(self.topic).set(outbox.pending_count(conn, self.topic))
        if now >= self._next_prune:
            self._next_prune = now + self.prune_s
            with self.db.begin() as conn:
                pruned = outbox.prune(conn, self.topic, self.retention_s)
            if pruned:
                log.info("status relay: pruned %d published events of %s", pruned, self.topic)
            self.expire()

    def expire(self) -> dict[str, int]:
        """Drop events of any topic that waited for Kafka past ``unpublished_max_age_s``
        (see :func:`pipeline.status.outbox.expire_unpublished`); counted and logged."""
        with self.db.begin() as conn:
            dropped = outbox.expire_unpublished(conn, self.unpublished_max_age_s)
        for topic, count in dropped.items():
            metrics.EXPIRED.labels(topic).inc(count)
            log.warning("status relay: dropped %d events of %s unpublished for over %.0f s",
                        count, topic, self.unpublished_max_age_s)
        return dropped

    def _wait(self, stop: threading.Event, why: str) -> None:
        self._backoff = min(self.backoff_max_s, max(1.0, self._backoff * 2))
        log.warning("status relay: %s; retrying in %.0f s", why, self._backoff)
        stop.wait(self._backoff)

    def _taken(self) -> None:
        metrics.ACTIVE.labels(self.topic).set(1)
        log.info("status relay: active for %s", self.topic)


def build(settings: Settings, db_engine: Engine, client: redis.Redis | None,
          topic: str | None = None, **options: object) -> tuple[Relay, KafkaSink]:
    """The relay of ``topic`` (default: the task topic) as the settings say, and its sink."""
    sink = KafkaSink(producer_factory(settings), settings.topic_status)
    cache = StatusCache(client, settings.status_cache_ttl_s) if client is not None else None
    relay = Relay(db_engine, topic or settings.topic_tasks, sink.publish, cache,
                  batch=settings.status_relay_batch, retention_s=settings.status_retention_s,
                  unpublished_max_age_s=settings.status_unpublished_max_age_s,
                  **options)  # type: ignore[arg-type]
    return relay, sink


@contextmanager
def relaying(settings: Settings, db_engine: Engine, client: redis.Redis | None,
             topic: str | None = None) -> Iterator[Relay]:
    """The relay on a thread of its own while the block runs (the bridge runs one per
    topic; one bridge's relay is active, the others stand by on its lock)."""
    relay, sink = build(settings, db_engine, client, topic)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="status-relay",
                              daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        stop.set()
        thread.join(timeout=30)
        sink.close()
