"""The bridge's Prometheus metrics (one set per process, on the default registry)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

log = logging.getLogger(__name__)

LAG = Gauge("sonic_kafka_consumer_lag",
            "Records in this bridge's partitions not yet committed (end offset - committed)",
            ["topic"])
BACKLOG = Gauge("sonic_bridge_backlog", "Admitted jobs of the topic not dispatched yet, as "
                "the bridge's backpressure sees them", ["topic"])
PAUSED = Gauge("sonic_bridge_paused", "1 while the bridge pauses its partitions", ["topic"])
ADMITTED = Counter("sonic_bridge_admitted_total", "Jobs admitted into the backlog", ["topic"])
DUPLICATES = Counter("sonic_bridge_duplicates_total",
                     "Messages whose task_id was already admitted", ["topic"])
REJECTED = Counter("sonic_bridge_rejected_total", "Messages rejected to the DLQ", ["code"])


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0: not served). A busy port is logged, not fatal."""
    if port <= 0:
        return
    try:
        start_http_server(port)
    except OSError as exc:
        log.warning("metrics: cannot listen on port %d (%s); not served", port, exc)
