"""The status relay's Prometheus metrics (the bridge's process, default registry):

    sonic_status_published_total{topic}     events Kafka acknowledged
    sonic_status_publish_failures_total{topic}  relay passes that left events unpublished
    sonic_status_outbox_pending{topic}      events not published yet (Kafka down: it grows)
    sonic_status_relay_active{topic}        1 on the bridge holding the topic's relay lock
    sonic_status_expired_total{topic}       events dropped unpublished after
                                            SONIC_STATUS_UNPUBLISHED_MAX_AGE_S (any topic's,
                                            counted by the relay that dropped them)
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PUBLISHED = Counter("sonic_status_published", "Status events Kafka acknowledged", ["topic"])
FAILURES = Counter("sonic_status_publish_failures", "Relay passes that left status events "
                   "unpublished (Kafka down or refusing)", ["topic"])
PENDING = Gauge("sonic_status_outbox_pending", "Status events in the outbox not published "
                "yet", ["topic"])
ACTIVE = Gauge("sonic_status_relay_active", "1 while this process's relay holds the topic's "
               "lock", ["topic"])
EXPIRED = Counter("sonic_status_expired", "Status events dropped unpublished after waiting "
                  "longer than SONIC_STATUS_UNPUBLISHED_MAX_AGE_S", ["topic"])
