"""Kafka clients for the CLI: the settings' security options, short timeouts, and the
consumer group's lag. Callers wrap their use in :func:`services.reaching_kafka`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from pipeline.settings import Settings


def _bootstrap_ms(settings: Settings) -> int:
    """Milliseconds a client waits for the first broker answer
    (``SONIC_KAFKA_BOOTSTRAP_TIMEOUT_S``)."""
    return int(settings.kafka_bootstrap_timeout_s * 1000)


def producer(settings: Settings) -> KafkaProducer:
    """An idempotent producer (``acks='all'``); close it after use."""
    return KafkaProducer(acks="all", bootstrap_timeout_ms=_bootstrap_ms(settings),
                         **settings.kafka_client_config())


def send(settings: Settings, topic: str, records: Sequence[dict[str, Any]]) -> list[Any]:
    """Produce ``records`` (``key``, ``value`` bytes, optional ``headers``) to ``topic``
    and wait for every acknowledgement; return their record metadata, in order."""
    client = producer(settings)
    try:
        futures = [client.send(topic, key=r.get("key"), value=r.get("value"),
                               headers=r.get("headers") or None) for r in records]
        return [future.get(timeout=30) for future in futures]
    finally:
        client.close(timeout=10)


def admin(settings: Settings) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_timeout_ms=_bootstrap_ms(settings),
                            request_timeout_ms=10000, **settings.kafka_client_config())


def consumer(settings: Settings, **options: Any) -> KafkaConsumer:
    """A consumer in no group (assign and seek by hand), never committing."""
    return KafkaConsumer(enable_auto_commit=False,
                         bootstrap_timeout_ms=_bootstrap_ms(settings),
                         **options, **settings.kafka_client_config())


def partitions(client: KafkaConsumer, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(client.partitions_for_topic(topic) or ())]


def read_all(settings: Settings, topic: str, poll_ms: int = 500) -> Iterator[Any]:
    """Every record of ``topic`` from the beginning to its end offsets at the call."""
    client = consumer(settings)
    try:
        tps = partitions(client, topic)
        if not tps:
            return
        client.assign(tps)
        ends = client.end_offsets(tps)
        client.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp] > client.position(tp)}
        idle = 0
        while left and idle < 20:
            batch = client.poll(timeout_ms=poll_ms)
            idle = 0 if batch else idle + 1
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                if client.position(tp) >= ends[tp]:
                    left.discard(tp)
    finally:
        client.close()


def group_lag(settings: Settings, topic: str, group: str) -> dict[int, int]:
    """Per partition of ``topic``: end offset minus ``group``'s committed offset (from the
    beginning when it never committed)."""
    client = consumer(settings, group_id=group)
    try:
        tps = partitions(client, topic)
        if not tps:
            return {}
        ends = client.end_offsets(tps)
        begins = client.beginning_offsets(tps)
        out = {}
        for tp in tps:
            committed = client.committed(tp)
            out[tp.partition] = max(0, ends[tp] - (committed if committed is not None
                                                   else begins[tp]))
        return out
    finally:
        client.close()
