"""The loop: poll, decode, hand the batch to the batch thread, commit the watermark.

    flow = backpressure(backlog)            pause / resume / how many records to take
    records = poll(max_records)             the main thread owns the consumer
    decode + invalid-ratio guard            here; then the batch thread admits (Postgres)
                                            and dead-letters (DLQ, acked)
    outcomes -> watermark -> commit {tp: next offset} of the contiguous durable prefix
    every few seconds: reconcile, lag

A failing step never loses a record: Postgres down rewinds the batch (seek back) and
backs off; a DLQ produce failure rewinds its partition from that record. Admission never
waits for Redis: the dispatcher moves admitted jobs into Celery on its own thread.

A ``poll()`` that raises (a record the client cannot decode) never stops the loop: the
undecodable step salvages the broken batch into an ordinary batch (its undecodable
records rejected as ``message.undecodable``) and the partition resumes after it; when
nothing can be located, the loop commits what is durable and subscribes again, which
makes the client drop whatever it holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError

from bridge import metrics
from bridge.backpressure import Backlog, Backpressure, Flow
from bridge.batches import BatchThread
from bridge.commit import Watermark
from bridge.consumer import Rebalance
from bridge.decode import Decoded
from bridge.errors import TRANSIENT
from bridge.guard import InvalidRatio
from bridge.phases import PHASES
from bridge.process import BatchOutcome
from bridge.signals import Shutdown
from bridge.undecodable import Salvage

log = logging.getLogger(__name__)


class Every:
    """Run ``fn`` at most every ``interval_s`` seconds, counted from the end of its last
    run (a slow run never leaves the loop without time to poll); its service errors are
    logged."""

    def __init__(self, interval_s: float, fn: Callable[[], object], name: str,
                 first_s: float | None = None) -> None:
        """``first_s``: seconds before the first run (default: one interval)."""
        self.interval_s, self.fn, self.name = interval_s, fn, name
        self._next = time.monotonic() + (interval_s if first_s is None else first_s)

    def __call__(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        try:
            self.fn()
        except TRANSIENT as exc:  # the first line: the driver's SQL echo is not news
            log.warning("%s failed: %s", self.name, (str(exc).splitlines() or [""])[0])
        finally:
            self._next = time.monotonic() + self.interval_s


class Loop:
    def __init__(self, consumer: KafkaConsumer, rebalance: Rebalance,
                 decode: Callable[[list], Decoded],  # type: ignore[type-arg]
                 guard: InvalidRatio, batches: BatchThread, backpressure: Backpressure,
                 backlog: Backlog, shutdown: Shutdown, poll_timeout_ms: int,
                 periodic: list[Every], topic: str,
                 undecodable: Callable[[KafkaConsumer], list[tuple[Salvage, Decoded]]]
                 | None = None) -> None:
        self.consumer, self.rebalance = consumer, rebalance
        self.decode, self.guard, self.batches = decode, guard, batches
        self.backpressure, self.backlog, self.shutdown = backpressure, backlog, shutdown
        self.poll_timeout_ms, self.periodic, self.topic = poll_timeout_ms, periodic, topic
        self.undecodable = undecodable
        self.watermark = Watermark()
        self.submitted = 0  #: rows handed to the batch thread, not yet admitted
        self._backoff = 0.0

    def run(self) -> None:
        """Until shutdown is requested; then finish the batches and commit."""
        try:
            while not self.shutdown.requested:
                self.once()
        finally:
            self.collect(self.batches.outcomes(wait=True))
            self.final_commit()
            log.info("bridge: %s", PHASES.line())

    def once(self) -> None:
        flow = self._flow()
        polling = time.perf_counter()
        records = self._poll(flow.max_records)
        self.watermark.drop(self.rebalance.take_gone())
        if records:
            PHASES.add("poll", time.perf_counter() - polling)
            batch = [r for part in records.values() for r in part]
            PHASES.count(len(batch))
            for record in batch:
                self.watermark.track(TopicPartition(record.topic, record.partition),
                                     record.offset)
            with PHASES.timed("decode"):
                decoded = self.decode(batch)
            self.guard.observe(decoded.invalid)
            self.submitted += len(decoded.rows)
            self.batches.submit(decoded)
        self.collect(self.batches.outcomes())
        self.commit()
        for task in self.periodic:
            task()

    def _poll(self, max_records: int) -> dict:  # type: ignore[type-arg]
        try:
            return self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=max_records)
        except Exception as exc:  # noqa: BLE001 - whatever the client fails on, move on
            log.warning("poll failed (%s: %s); looking for records the client cannot decode",
                        type(exc).__name__, exc)
            self._salvage()
            return {}

    def _salvage(self) -> None:
        found: list[tuple[Salvage, Decoded]] = []
        if self.undecodable is not None:
            try:
                found = self.undecodable(self.consumer)
            except TRANSIENT as exc:
                log.error("reading the undecodable records failed (%s)", exc)
        if not found:
            self._resubscribe()
            self._sleep_backoff()
            return
        for salvage, decoded in found:
            for record in decoded.records:
                self.watermark.track(salvage.tp, record.offset)
            bad = sorted(salvage.problems)
            log.error("%s: the client cannot decode the batch at %d; %d record(s) "
                      "dead-lettered as message.undecodable (%s), the rest admitted; "
                      "resuming at %d", salvage.tp,
                      decoded.records[0].offset if decoded.records else salvage.resume_at, len(bad),
                      salvage.problems[bad[0]].reason if bad else "an earlier record",
                      salvage.resume_at)
            self.guard.observe(decoded.invalid)
            self.submitted += len(decoded.rows)
            self.batches.submit(decoded)
            self.consumer.seek(salvage.tp, salvage.resume_at)

    def _resubscribe(self) -> None:
        """Make the client drop what it fetched: commit the durable prefix, leave, rejoin
        (records past the commit come again and are counted as duplicates)."""
        log.error("no undecodable record located; committing and subscribing again")
        self.collect(self.batches.outcomes(wait=True))
        self.commit()
        self.watermark.drop(self.consumer.assignment())
        self.consumer.unsubscribe()
        self.consumer.subscribe([self.topic], listener=self.rebalance)

    def collect(self, outcomes: list[BatchOutcome]) -> None:
        for out in outcomes:
            self.submitted -= len(out.batch.rows)
            self.backlog.add(out.admitted_jobs)
            records = out.batch.records
            if not out.admitted:
                self._rewind({(r.topic, r.partition) for r in records})
                self._sleep_backoff()
                continue
            self._backoff = 0.0
            for r in records:
                if r.offset < out.failed.get((r.topic, r.partition), r.offset + 1):
                    self.watermark.done(TopicPartition(r.topic, r.partition), r.offset)
            self._rewind(set(out.failed))

    def commit(self) -> bool:
        """Commit the durable prefix; False when it must be tried again."""
        assigned = self.consumer.assignment()
        offsets = {tp: m for tp, m in self.watermark.offsets().items() if tp in assigned}
        if not offsets:
            return True
        try:
            with PHASES.timed("kafka_commit"):
                self.consumer.commit(offsets)
        except CommitFailedError as exc:
            # The group rebalanced under the commit. Partitions assigned back keep their
            # position (and this watermark): committed after the rejoin. Those that went
            # away are dropped by the rebalance listener; their new owner re-reads them.
            log.warning("commit refused during a rebalance (%s); retried after it", exc)
            return False
        except KafkaError as exc:
            log.warning("commit failed (%s); retried with the next batch", exc)
            return False
        self.watermark.committed(offsets)
        return True

    def final_commit(self, timeout_s: float = 10.0) -> None:
        """On the way out: commit what is durable, finishing a rebalance if one is under
        way (partitions paused: the polls that drive it return no records)."""
        deadline = time.monotonic() + timeout_s
        self.rebalance.paused = True
        try:
            self.consumer.pause(*self.consumer.assignment())
            while not self.commit() and time.monotonic() < deadline:
                self.consumer.poll(timeout_ms=200)
                self.watermark.drop(self.rebalance.take_gone())
        except KafkaError as exc:
            log.warning("final commit failed (%s)", exc)
        assigned = self.consumer.assignment()
        left = sum(1 for tp in self.watermark.offsets() if tp in assigned)
        if left:
            log.warning("stopping with %d partitions' durable offsets uncommitted: "
                        "their records come again and are counted as duplicates", left)

    def _flow(self) -> Flow:
        try:
            backlog = self.backlog.value() + self.submitted
        except TRANSIENT as exc:
            log.warning("backlog count failed (%s); pausing", exc)
            backlog = self.backpressure.high
        flow = self.backpressure.flow(backlog)
        metrics.BACKLOG.labels(self.topic).set(backlog)
        paused = self.rebalance.paused
        if flow.paused and not paused:
            self.consumer.pause(*self.consumer.assignment())
            log.info("pausing: %d jobs in the backlog (max %d)", backlog,
                     self.backpressure.high)
        elif not flow.paused and paused:
            self.consumer.resume(*self.consumer.paused())
            log.info("resuming: %d jobs in the backlog (low %d)", backlog,
                     self.backpressure.low)
        self.rebalance.paused = flow.paused
        metrics.PAUSED.labels(self.topic).set(int(flow.paused))
        return flow

    def _rewind(self, partitions: set[tuple[str, int]]) -> None:
        assigned = self.consumer.assignment()
        for topic, partition in partitions:
            tp = TopicPartition(topic, partition)
            offset = self.watermark.rewind(tp)
            if offset is not None and tp in assigned:
                self.consumer.seek(tp, offset)

    def _sleep_backoff(self) -> None:
        self._backoff = min(5.0, max(0.2, self._backoff * 2))
        deadline = time.monotonic() + self._backoff
        while not self.shutdown.requested and time.monotonic() < deadline:
            time.sleep(0.05)
