"""The scheduler's Prometheus metrics (the bridge's process, default registry, served on
``SONIC_METRICS_PORT``).

Set by the dispatcher as it works:

    sonic_backlog_jobs{topic}                       admitted, not dispatched (runnable+waiting)
    sonic_dispatched_total{topic}                   chains sent
    sonic_dispatch_pick_seconds{topic}              one pick statement (histogram)
    sonic_dispatch_latency_seconds{topic}           admission -> chain published (histogram)
    sonic_expired_total{topic}                      jobs expired before they started
    sonic_dispatcher_active{topic}                  1 on the bridge holding the topic's lock

Refreshed by the active dispatcher's upkeep (:class:`SchedulerGauges`, every second):

    sonic_scheduler_backlog_tenant_jobs{topic,status,tenant}
        status ``runnable`` | ``waiting`` | ``inflight`` (queued or running), from the
        trigger-kept ``tenants`` table (one small query, no scan of ``tasks``). Only the
        ``SONIC_METRICS_TOP_TENANTS`` tenants with the most jobs (runnable + waiting, then
        in flight) get series of their own; the others are summed in ``tenant="__other__"``
        (10,000 tenants never make 30,000 series); jobs without a tenant are ``tenant=""``.
        A tenant that leaves the top has its series removed.
    sonic_scheduler_backlog_priority_jobs{topic,status,priority}
        status ``received`` | ``waiting``, per priority 0-9; and
    sonic_scheduler_oldest_runnable_seconds{topic}
        age of the oldest ``received`` (runnable) job, 0 when none: both from one grouped
        scan of the backlog's rows, so every ``SONIC_METRICS_SCAN_S`` only.
    sonic_tenant_gpu_seconds_total{topic,tenant}
        gpu-stage seconds of the topic's jobs, from the ``duration_s`` of finished gpu
        stage runs in ``task_events`` (succeeded, failed, cancelled, retried, lost), read
        incrementally by event id (events younger than ``EVENT_SETTLE_S`` are left for the
        next refresh, so one committed late is not skipped). A tenant's share of the gpu
        is its rate over the sum. At most ``5 x SONIC_METRICS_TOP_TENANTS`` tenants get a
        series (first come, in this process); the rest count in ``__other__``.

Set by the control consumer (:mod:`bridge.control`):

    sonic_control_commands_total{command,outcome}   outcome: cancelled, cancelled_running,
                                                    cancelled_before_admission, already_final
    sonic_control_invalid_total{code}               refused control records (to the DLQ)
"""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Connection, text

log = logging.getLogger(__name__)

BACKLOG = Gauge("sonic_backlog_jobs", "Admitted jobs not dispatched yet (runnable + waiting)",
                ["topic"])
DISPATCHED = Counter("sonic_dispatched_total", "Jobs the dispatcher sent to Celery", ["topic"])
EXPIRED = Counter("sonic_expired_total", "Jobs expired before they started", ["topic"])
PICK_SECONDS = Histogram("sonic_dispatch_pick_seconds", "Seconds one pick statement took",
                         ["topic"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                             0.1, 0.25, 1))
ACTIVE = Gauge("sonic_dispatcher_active", "1 while this process's dispatcher holds the "
               "topic's lock", ["topic"])
DISPATCH_LATENCY = Histogram(
    "sonic_dispatch_latency_seconds", "Seconds from a job's admission to its chain published "
    "to Celery", ["topic"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300,
                                     900, 3600, 14400))
TENANT_BACKLOG = Gauge(
    "sonic_scheduler_backlog_tenant_jobs", "Jobs per tenant and status (runnable, waiting, "
    "inflight); the top tenants only, the rest in tenant=\"__other__\"",
    ["topic", "status", "tenant"])
PRIORITY_BACKLOG = Gauge(
    "sonic_scheduler_backlog_priority_jobs", "Jobs not dispatched yet per status (received, "
    "waiting) and priority", ["topic", "status", "priority"])
OLDEST_RUNNABLE = Gauge("sonic_scheduler_oldest_runnable_seconds",
                        "Age of the oldest runnable (received) job, 0 when none", ["topic"])
TENANT_GPU_SECONDS = Counter(
    "sonic_tenant_gpu_seconds", "Seconds of gpu stage per tenant (finished gpu stage runs)",
    ["topic", "tenant"])
CONTROL_COMMANDS = Counter("sonic_control_commands", "Control-topic commands applied, per "
                           "outcome for each task id", ["command", "outcome"])
CONTROL_INVALID = Counter("sonic_control_invalid", "Control-topic records refused (sent to "
                          "the DLQ), per code", ["code"])

#: The label of the tenants summed together (outside the top, or past the series cap).
OTHER = "__other__"
#: Statuses of the tenant gauge (columns of the ``tenants`` table).
TENANT_STATUSES = ("runnable", "waiting", "inflight")
#: Events this young are read on the next refresh (a transaction may still commit one
#: with a lower id).
EVENT_SETTLE_S = 2.0

_TENANTS = text("""
WITH ranked AS (
    SELECT tenant, runnable, waiting, inflight,
           row_number() OVER (ORDER BY runnable + waiting DESC, inflight DESC, tenant) AS rank
    FROM tenants WHERE topic = :topic AND runnable + waiting + inflight > 0
)
SELECT CASE WHEN rank <= :top THEN tenant END AS tenant, sum(runnable) AS runnable,
       sum(waiting) AS waiting, sum(inflight) AS inflight
FROM ranked GROUP BY 1""")

#: One status per branch, so each reads its partial index (ix_tasks_pick, ix_tasks_waiting)
#: when the backlog is a small part of the table's history: the cost follows the backlog.
_PRIORITIES = text("""
SELECT 'received' AS status, priority, count(*) AS jobs,
       extract(epoch FROM now() - min(received_at)) AS oldest_s
FROM tasks WHERE kafka_topic = :topic AND status = 'received' GROUP BY priority
UNION ALL
SELECT 'waiting', priority, count(*), extract(epoch FROM now() - min(received_at))
FROM tasks WHERE kafka_topic = :topic AND status = 'waiting' GROUP BY priority""")

_EVENTS_UPTO = text("""
SELECT coalesce(max(id), 0) FROM task_events
WHERE at < now() - make_interval(secs => :settle)""")

_GPU = text("""
SELECT coalesce(t.tenant, '') AS tenant, sum(e.duration_s) AS seconds
FROM task_events e JOIN tasks t ON t.task_id = e.task_id
WHERE e.id > :after AND e.id <= :upto AND e.stage = 'gpu' AND e.duration_s IS NOT NULL
  AND t.kafka_topic = :topic
GROUP BY 1""")


class SchedulerGauges:
    """Refreshes the backlog gauges and the gpu-seconds counter of one topic (the module
    docstring says what and how often). ``refresh`` never raises: a failed refresh is
    logged and the dispatcher goes on."""

    def __init__(self, topic: str, top_tenants: int = 20, scan_s: float = 10.0) -> None:
        self.topic, self.top, self.scan_s = topic, max(1, top_tenants), scan_s
        self.series_max = 5 * self.top
        self._tenant_labels: set[tuple[str, str]] = set()
        self._priority_labels: set[tuple[str, str]] = set()
        self._gpu_tenants: set[str] = set()
        self._next_scan = 0.0
        self._events_after: int | None = None

    def refresh(self, conn: Connection) -> None:
        try:
            self.tenants(conn)
            if time.monotonic() >= self._next_scan:
                self.priorities(conn)
                self._next_scan = time.monotonic() + self.scan_s
            self.gpu_seconds(conn)
        except Exception as exc:  # noqa: BLE001 - metrics never stop the dispatcher
            log.warning("scheduler metrics: refresh failed: %s",
                        (str(exc).splitlines() or [""])[0])

    def tenants(self, conn: Connection) -> None:
        """The per-tenant gauges from the ``tenants`` table: top N plus ``__other__``."""
        seen: set[tuple[str, str]] = set()
        for row in conn.execute(_TENANTS, {"topic": self.topic, "top": self.top}):
            tenant = OTHER if row.tenant is None else row.tenant
            for status in TENANT_STATUSES:
                TENANT_BACKLOG.labels(self.topic, status, tenant).set(int(getattr(row, status)))
                seen.add((status, tenant))
        for status, tenant in self._tenant_labels - seen:
            TENANT_BACKLOG.remove(self.topic, status, tenant)
        self._tenant_labels = seen

    def priorities(self, conn: Connection) -> None:
        """Backlog per status and priority, and the oldest runnable job's age."""
        seen: set[tuple[str, str]] = set()
        oldest = 0.0
        for row in conn.execute(_PRIORITIES, {"topic": self.topic}):
            label = (row.status, str(row.priority))
            PRIORITY_BACKLOG.labels(self.topic, *label).set(int(row.jobs))
            seen.add(label)
            if row.status == "received":
                oldest = max(oldest, float(row.oldest_s or 0.0))
        for label in self._priority_labels - seen:
            PRIORITY_BACKLOG.remove(self.topic, *label)
        self._priority_labels = seen
        OLDEST_RUNNABLE.labels(self.topic).set(oldest)

    def gpu_seconds(self, conn: Connection) -> None:
        """Add the gpu seconds of the events written since the last refresh (the first
        refresh only places the cursor: this process counts from its start)."""
        upto = int(conn.execute(_EVENTS_UPTO, {"settle": EVENT_SETTLE_S}).scalar_one())
        if self._events_after is None:
            self._events_after = upto
            return
        if upto <= self._events_after:
            return
        rows = conn.execute(_GPU, {"after": self._events_after, "upto": upto,
                                   "topic": self.topic}).all()
        for row in sorted(rows, key=lambda r: -float(r.seconds or 0.0)):
            TENANT_GPU_SECONDS.labels(self.topic, self._gpu_label(row.tenant)).inc(
                float(row.seconds or 0.0))
        self._events_after = upto

    def _gpu_label(self, tenant: str) -> str:
        if tenant in self._gpu_tenants:
            return tenant
        if len(self._gpu_tenants) < self.series_max:
            self._gpu_tenants.add(tenant)
            return tenant
        return OTHER
