"""The dispatcher's Prometheus metrics (the bridge's process, default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BACKLOG = Gauge("sonic_backlog_jobs", "Admitted jobs not dispatched yet (runnable + waiting)",
                ["topic"])
DISPATCHED = Counter("sonic_dispatched_total", "Jobs the dispatcher sent to Celery", ["topic"])
EXPIRED = Counter("sonic_expired_total", "Jobs expired before they started", ["topic"])
PICK_SECONDS = Histogram("sonic_dispatch_pick_seconds", "Seconds one pick statement took",
                         ["topic"], buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                             0.1, 0.25, 1))
ACTIVE = Gauge("sonic_dispatcher_active", "1 while this process's dispatcher holds the "
               "topic's lock", ["topic"])
