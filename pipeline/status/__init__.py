"""Status events: every state change of a job, published to Kafka and cached in Redis.

    triggers (migration 0004)   write an event to ``status_outbox`` in the transaction of
                                each change: admission, status, progress (one a second),
                                stage events (``task_events``)
    relay                       one per topic (advisory lock), a thread of each bridge:
                                outbox -> Kafka ``SONIC_TOPIC_STATUS``, keyed by task id,
                                in order per task; Kafka down: events wait in the outbox
    cache                       ``sonic:status:<task_id>`` in Redis, the newest event,
                                expiring after ``SONIC_STATUS_CACHE_TTL_S``

For readers (the HTTP service):

    latest_status(db_engine, task_id, client=None)    the newest event (Redis, else
                                                      PostgreSQL); None: no such task
    events_after(db_engine, task_id, after_id=0)      the task's events with an id above
                                                      ``after_id``, oldest first (SSE
                                                      ``Last-Event-ID`` = the event's id)

The event's shape is :mod:`pipeline.status.events` (and the README, "Status events").
"""

from pipeline.status.cache import latest_status
from pipeline.status.events import EVENTS, FINAL_EVENTS, SCHEMA_VERSION, StatusEvent
from pipeline.status.outbox import events_after
from pipeline.status.relay import Relay, relaying

__all__ = ["EVENTS", "FINAL_EVENTS", "SCHEMA_VERSION", "Relay", "StatusEvent", "events_after",
           "latest_status", "relaying"]
