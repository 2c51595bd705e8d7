"""The dispatcher: one loop per topic that moves runnable jobs from PostgreSQL into the
Celery window while it has room.

    hold the topic's advisory lock (others stand by, trying every second)
    every second: upkeep (expire, release, dependency.unknown, owed callbacks)
    room = window - jobs dispatched and not yet past the gpu stage
    while room: pick one job (one statement), publish its chain, commit
    window full: up to ``express`` more, each only if it must go before a job of the
                 window not yet on the gpu (:func:`pick.overtake`), published at the
                 Redis priority that puts it there
    nothing sent: sleep until woken (:mod:`pipeline.state.wake`: admission made jobs
                  runnable, a stage left the gpu or ended a job) or ``idle_s`` passed

The lock's session listens for the wake-ups, so a job admitted to an idle dispatcher is
picked within milliseconds, not at the next poll; the poll stays, and a lost
notification costs one ``idle_s`` at most.

The pick and the publish share one transaction: a publish that fails rolls the pick back
(the job stays runnable); a commit that fails after the publish leaves a chain whose
stages find the job not theirs to run, or run it once (stage leases). Service errors are
logged and retried after a back-off; the loop never dies of them.

It runs beside the bridge's consumer loop (``python -m bridge`` starts it on a thread of
its own), so admission and dispatch never wait for each other.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from sqlalchemy import Engine

from pipeline.scheduler import metrics, pick, upkeep
from pipeline.state import wake
from pipeline.state.advisory import SessionLock

log = logging.getLogger(__name__)

#: ``publish(task_id, priority, first_stage)``: send a chain from that stage.
Publish = Callable[[str, int, str], None]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Dispatcher:
    """Fill ``window`` for ``topic`` from the backlog (see the module docstring)."""

    def __init__(self, db_engine: Engine, topic: str, publish: Publish, *, window: int,
                 tenant_cap: int, dependency_wait_s: float, idle_s: float = 0.1,
                 weights: dict[str, float] | None = None, upkeep_s: float = 1.0,
                 errors: tuple[type[BaseException], ...] = (Exception,),
                 gauges: metrics.SchedulerGauges | None = None, express: int = 1) -> None:
        self.db, self.topic, self.publish = db_engine, topic, publish
        self.window, self.tenant_cap = window, tenant_cap
        #: Places beyond the full window for jobs that overtake it (one per gpu slot).
        self.express = max(0, express)
        self.dependency_wait_s, self.idle_s, self.upkeep_s = dependency_wait_s, idle_s, upkeep_s
        self.weights = weights or {}
        self.errors = errors
        self.gauges = gauges or metrics.SchedulerGauges(topic)
        self.key = f"sonic-dispatch:{topic}"
        self.lock = SessionLock(db_engine, self.key, on_take=self._taken,
                                on_drop=lambda: metrics.ACTIVE.labels(self.topic).set(0))
        self._next_upkeep = 0.0
        self._resume_at: datetime = _EPOCH
        self._backoff = 0.0
        self._stop = threading.Event()

    # --- the loop ---------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set (checked between two picks, never between a publish and
        its commit); then release the lock."""
        self._stop = stop
        try:
            while not stop.is_set():
                try:
                    if not self.lock.hold():
                        stop.wait(1.0)
                        continue
                    busy = self.once()
                    self._backoff = 0.0
                    if not busy:
                        self._idle(stop)
                except self.errors as exc:
                    self.lock.drop()
                    self._backoff = min(5.0, max(0.2, self._backoff * 2))
                    log.warning("dispatcher: %s; retrying in %.1f s",
                                (str(exc).splitlines() or [""])[0], self._backoff)
                    stop.wait(self._backoff)
        finally:
            self.lock.drop()

    @property
    def active(self) -> bool:
        """Whether this dispatcher holds the topic's lock (the active one)."""
        return self.lock.held

    def _idle(self, stop: threading.Event) -> bool:
        """Nothing to send: wait for a wake-up or ``idle_s`` (True: woken)."""
        conn = self.lock.connection
        if conn is None:
            stop.wait(self.idle_s)
            return False
        return wake.wait(conn, self.topic, self.idle_s, stop)

    def once(self) -> int:
        """One pass: upkeep when due, then fill the window. Returns the jobs dispatched."""
        now = time.monotonic()
        if now >= self._next_upkeep:
            self.upkeep()
            self._next_upkeep = time.monotonic() + self.upkeep_s
        with self.db.connect() as conn:
            room = self.window - pick.ahead_of_gpu(conn, self.topic)
        sent = 0
        choose = pick.pick
        while room > -self.express and not self._stop.is_set():
            if room <= 0:  # full: only a job that must go before the window's
                choose = pick.overtake
            with self.db.begin() as conn:
                started = time.perf_counter()
                job = choose(conn, self.topic, self.tenant_cap)
                picked = time.perf_counter()
                metrics.PICK_SECONDS.labels(self.topic).observe(picked - started)
                if job is None:
                    break
                self.publish(job.task_id, job.publish_priority, "preprocess")
                metrics.DISPATCH_LATENCY.labels(self.topic).observe(
                    job.waited_s + time.perf_counter() - picked)
            sent += 1
            room -= 1
        if sent:
            metrics.DISPATCHED.labels(self.topic).inc(sent)
        return sent

    def upkeep(self) -> None:
        """Expire, release, fail unknown dependencies, publish owed callbacks; metrics."""
        with self.db.begin() as conn:
            expired = upkeep.expire(conn, self.topic)
            released, unknown, nxt = upkeep.resolve(conn, self.topic, self._resume_at,
                                                    self.dependency_wait_s)
            self._resume_at = nxt or _EPOCH
            owed = upkeep.owed_callbacks(conn, self.topic)
            metrics.BACKLOG.labels(self.topic).set(pick.backlog(conn, self.topic))
        # Published once the finals that owe them are durable: a callback sent before the
        # commit could outlive a rollback (a process killed in between) and reach a job that
        # never ended. One lost after the commit is re-sent by the reconciler (owed callbacks).
        for task_id, priority in owed:
            self.publish(task_id, priority, "callback")
        with self.db.connect() as conn:
            self.gauges.refresh(conn)
        metrics.EXPIRED.labels(self.topic).inc(len(expired))
        if expired or released or unknown or owed:
            log.info("dispatcher: %d expired, %d released, %d failed on their "
                     "dependencies, %d callbacks sent", len(expired), len(released),
                     len(unknown), len(owed))

    # --- the lock ---------------------------------------------------------------------
    def _taken(self) -> None:
        """The lock was just taken: listen for wake-ups, store the weights."""
        metrics.ACTIVE.labels(self.topic).set(1)
        log.info("dispatcher: active for %s (window %d)", self.topic, self.window)
        conn = self.lock.connection
        assert conn is not None
        wake.listen(conn)
        with self.db.begin() as tx:
            pick.set_weights(tx, self.topic, self.weights)
