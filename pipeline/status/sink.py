"""Publishing status events to Kafka: keyed by task id (a task's events share a partition,
so Kafka keeps their order), idempotent producer, ``acks=all``.

:meth:`KafkaSink.publish` never raises for Kafka's sake: it says which events Kafka
acknowledged. Kafka down: the producer is built again on the next call, and the events
not acknowledged stay in the outbox for the relay to send again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipeline.settings import Settings
from pipeline.status.events import SCHEMA_VERSION, StatusEvent, encode

log = logging.getLogger(__name__)

#: Milliseconds the producer waits for a broker at start / for one request / for an event
#: to be acknowledged in all (its retries included) / for metadata in ``send``.
BOOTSTRAP_MS = 5_000
REQUEST_MS = 5_000
DELIVERY_MS = 10_000
BLOCK_MS = 5_000

HEADERS = [("sonic-schema", str(SCHEMA_VERSION).encode())]


def producer_factory(settings: Settings, *, bootstrap_ms: int = BOOTSTRAP_MS,
                     request_ms: int = REQUEST_MS, delivery_ms: int = DELIVERY_MS,
                     block_ms: int = BLOCK_MS) -> Callable[[], KafkaProducer]:
    def build() -> KafkaProducer:
        return KafkaProducer(
            acks="all", linger_ms=5, bootstrap_timeout_ms=bootstrap_ms,
            request_timeout_ms=request_ms, delivery_timeout_ms=delivery_ms,
            max_block_ms=block_ms, client_id="sonic-status-relay",
            **settings.kafka_client_config())
    return build


class KafkaSink:
    """Send events to ``topic`` with a producer from ``build`` (made when first needed)."""

    def __init__(self, build: Callable[[], KafkaProducer], topic: str,
                 flush_timeout_s: float = DELIVERY_MS / 1000 + 2) -> None:
        self.build, self.topic, self.flush_timeout_s = build, topic, flush_timeout_s
        self._producer: KafkaProducer | None = None

    def publish(self, events: Sequence[StatusEvent]) -> list[bool]:
        """Send ``events`` in order and wait for them; per event, whether Kafka has it."""
        if not events:
            return []
        try:
            producer = self._producer or self.build()
        except KafkaError as exc:
            log.warning("status relay: Kafka unreachable (%s)", type(exc).__name__)
            return [False] * len(events)
        self._producer = producer
        futures = []
        try:
            for event in events:
                futures.append(producer.send(self.topic, key=event["task_id"].encode(),
                                             value=encode(event), headers=HEADERS))
            producer.flush(timeout=self.flush_timeout_s)
        except KafkaError as exc:
            log.warning("status relay: publishing failed (%s)", type(exc).__name__)
        done = [f.is_done and f.succeeded() for f in futures]
        done += [False] * (len(events) - len(done))
        if not all(done):
            self.reset()
        return done

    def reset(self) -> None:
        """Drop the producer (unsent events with it); the next publish builds a new one."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - closing a broken client
                pass

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)
