"""The bridge's Prometheus metrics (one set per process, on the default registry).

Kept as the bridge works:

    sonic_bridge_consumed_total{topic}          records read from Kafka (every one, valid or not)
    sonic_bridge_admitted_total{topic}          new jobs admitted into the backlog
    sonic_bridge_duplicates_total{topic}        messages whose task_id was already admitted
    sonic_bridge_rejected_total{code}           messages rejected (acknowledged by the DLQ)
    sonic_bridge_dlq_total{topic,outcome}       DLQ produces: sent, failed (read again)
    sonic_bridge_commits_total{topic}           offset commits that succeeded
    sonic_kafka_consumer_lag{topic,partition}   end offset - committed offset, per partition
                                                this bridge holds (every SONIC_LAG_INTERVAL_S)
    sonic_bridge_paused_partitions{topic}       partitions paused by backpressure
    sonic_bridge_paused{topic}                  1 while the bridge pauses its partitions
    sonic_bridge_backlog{topic}                 admitted jobs not dispatched yet, as the
                                                bridge's backpressure sees them

Read at each scrape (:class:`Fleet`, one indexed query over the dispatched jobs and one
passive queue declaration per Celery queue):

    sonic_pool_backlog_jobs{pool}               dispatched jobs whose current stage belongs
                                                to the pool and that no worker holds yet
    sonic_pool_inflight_jobs{pool}              those a worker of the pool holds (a lease)
    sonic_pool_oldest_waiting_seconds{pool}     how long the oldest of the former has waited
    sonic_celery_queue_depth{queue}             messages waiting in each Celery queue

The scheduler's own metrics (backlog by status, tenant and priority, the oldest runnable
job, dispatch latency, gpu seconds per tenant) are :mod:`pipeline.scheduler.metrics`; the
stage metrics of the reconciler's takeovers are :mod:`pipeline.metrics`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from kombu.exceptions import ChannelError
from prometheus_client import REGISTRY, Counter, Gauge, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Engine, text

from pipeline.celery_config import DEFAULT_QUEUE, POOLS
from pipeline.settings import STAGES

log = logging.getLogger(__name__)

LAG = Gauge("sonic_kafka_consumer_lag",
            "Records in this bridge's partitions not yet committed (end offset - committed)",
            ["topic", "partition"])
BACKLOG = Gauge("sonic_bridge_backlog", "Admitted jobs of the topic not dispatched yet, as "
                "the bridge's backpressure sees them", ["topic"])
PAUSED = Gauge("sonic_bridge_paused", "1 while the bridge pauses its partitions", ["topic"])
PAUSED_PARTITIONS = Gauge("sonic_bridge_paused_partitions", "Partitions of the topic this "
                          "bridge holds paused", ["topic"])
CONSUMED = Counter("sonic_bridge_consumed_total", "Records read from Kafka", ["topic"])
ADMITTED = Counter("sonic_bridge_admitted_total", "Jobs admitted into the backlog", ["topic"])
DUPLICATES = Counter("sonic_bridge_duplicates_total",
                     "Messages whose task_id was already admitted", ["topic"])
REJECTED = Counter("sonic_bridge_rejected_total", "Messages rejected to the DLQ", ["code"])
DLQ = Counter("sonic_bridge_dlq_total", "Messages produced to the DLQ: sent (acknowledged) "
              "or failed (the record is read again)", ["topic", "outcome"])
COMMITS = Counter("sonic_bridge_commits_total", "Offset commits that succeeded", ["topic"])

#: The pool that runs each stage.
POOL_OF = {queue: pool for pool, queues in POOLS.items() for queue in queues}

_FLEET = text("""
SELECT stage, count(*) FILTER (WHERE lease_owner IS NULL) AS waiting,
       count(*) FILTER (WHERE lease_owner IS NOT NULL) AS held,
       extract(epoch FROM now() - min(updated_at) FILTER (WHERE lease_owner IS NULL))
         AS oldest_s
FROM tasks WHERE kafka_topic = :topic AND status IN ('queued', 'running')
GROUP BY stage""")


def start(topic: str) -> None:
    """Show the topic's counters at zero from the start (a rate needs the first sample)."""
    for metric in (CONSUMED, ADMITTED, DUPLICATES, COMMITS, PAUSED, PAUSED_PARTITIONS):
        metric.labels(topic)
    for outcome in ("sent", "failed"):
        DLQ.labels(topic, outcome)


def observe_consumer(consumer: Any, topic: str) -> None:
    """Lag per partition this bridge holds and its paused partitions, from ``consumer``
    (a KafkaConsumer; called on the poll thread). Revoked partitions' series go."""
    assigned = [tp for tp in consumer.assignment() if tp.topic == topic]
    lags: dict[int, int] = {}
    if assigned:
        ends = consumer.end_offsets(assigned)
        committed = {tp: consumer.committed(tp) for tp in assigned}
        missing = [tp for tp, offset in committed.items() if offset is None]
        if missing:
            committed.update(consumer.beginning_offsets(missing))
        lags = {tp.partition: max(0, ends.get(tp, 0) - (committed[tp] or 0)) for tp in assigned}
    for partition, value in lags.items():
        LAG.labels(topic, str(partition)).set(value)
    with _shown_lock:
        for partition in _shown.get(topic, set()) - set(lags):
            LAG.remove(topic, str(partition))
        _shown[topic] = set(lags)
    PAUSED_PARTITIONS.labels(topic).set(sum(1 for tp in consumer.paused() if tp.topic == topic))


_shown: dict[str, set[int]] = {}
_shown_lock = threading.Lock()


class Fleet:
    """A collector: the pools' backlog, in-flight jobs and oldest wait (PostgreSQL) and the
    Celery queues' depth (the broker), read when Prometheus scrapes. A service that fails
    leaves its series out of that scrape (logged), never the whole scrape."""

    def __init__(self) -> None:
        self.target: tuple[Engine, Any, str] | None = None

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration (it would query the services)

    def collect(self) -> Iterator[Metric]:
        if self.target is None:
            return
        db_engine, app, topic = self.target
        yield from self._pools(db_engine, topic)
        yield from self._queues(app)

    def _pools(self, db_engine: Engine, topic: str) -> Iterator[Metric]:
        try:
            with db_engine.connect() as conn:
                rows = conn.execute(_FLEET, {"topic": topic}).all()
        except Exception as exc:  # noqa: BLE001 - a scrape never fails for a service down
            log.warning("metrics: pool counts unavailable: %s", str(exc).splitlines()[0])
            return
        waiting = {pool: 0 for pool in POOLS}
        held = dict(waiting)
        oldest = {pool: 0.0 for pool in POOLS}
        for row in rows:
            pool = POOL_OF.get(row.stage or "preprocess")
            if pool is None:
                continue
            waiting[pool] += int(row.waiting)
            held[pool] += int(row.held)
            oldest[pool] = max(oldest[pool], float(row.oldest_s or 0.0))
        for name, doc, values in (
                ("sonic_pool_backlog_jobs", "Dispatched jobs waiting for a worker of the "
                 "pool", waiting),
                ("sonic_pool_inflight_jobs", "Jobs a worker of the pool holds", held),
                ("sonic_pool_oldest_waiting_seconds", "Seconds the oldest job waiting for "
                 "the pool has waited (0: none)", oldest)):
            family = GaugeMetricFamily(name, doc, labels=["pool"])
            for pool, value in values.items():
                family.add_metric([pool], value)
            yield family

    def _queues(self, app: Any) -> Iterator[Metric]:
        family = GaugeMetricFamily("sonic_celery_queue_depth", "Messages waiting in each "
                                   "Celery queue", labels=["queue"])
        try:
            with app.connection_for_read() as conn:
                channel = conn.default_channel
                for queue in (*STAGES, DEFAULT_QUEUE):
                    try:
                        depth = channel.queue_declare(queue=queue, passive=True).message_count
                    except ChannelError:  # never declared yet: nothing waits in it
                        depth = 0
                    family.add_metric([queue], depth)
        except Exception as exc:  # noqa: BLE001 - a scrape never fails for a service down
            log.warning("metrics: queue depth unavailable: %s", str(exc).splitlines()[0])
            return
        yield family


_fleet = Fleet()
REGISTRY.register(_fleet)


def watch_fleet(db_engine: Engine, app: Any, topic: str) -> None:
    """Let the scrape read the pools of ``topic`` and the queues of the Celery ``app``."""
    _fleet.target = (db_engine, app, topic)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: not served). A busy port is logged, not fatal."""
    if port <= 0:
        return
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics: cannot listen on port %d (%s); not served", port, exc)
