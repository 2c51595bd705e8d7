"""The local Kafka is real: produce, consume in a group, commit explicit offsets."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def test_produce_consume_commit_round_trip(stack: Settings, unique: str) -> None:
    topic = f"test-roundtrip-{unique}"
    admin = KafkaAdminClient(**stack.kafka_client_config())
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    try:
        producer = KafkaProducer(acks="all", **stack.kafka_client_config())
        sent = [producer.send(topic, key=f"k{i}".encode(), value=json.dumps({"n": i}).encode())
                for i in range(20)]
        metas = [s.get(timeout=30) for s in sent]
        producer.close()
        assert {m.topic for m in metas} == {topic}

        group = f"test-group-{unique}"
        consumer = KafkaConsumer(topic, group_id=group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", consumer_timeout_ms=15000,
                                 **stack.kafka_client_config())
        seen: dict[int, int] = {}
        values = []
        for record in consumer:
            values.append(json.loads(record.value)["n"])
            seen[record.partition] = record.offset
            if len(values) == 20:
                break
        assert sorted(values) == list(range(20))
        # Commit exactly what was processed: the next offset per partition.
        offsets = {TopicPartition(topic, p): OffsetAndMetadata(o + 1, "", -1)
                   for p, o in seen.items()}
        consumer.commit(offsets)
        consumer.close()

        # A new member of the group starts after the committed offsets: nothing left.
        again = KafkaConsumer(topic, group_id=group, enable_auto_commit=False,
                              auto_offset_reset="earliest", consumer_timeout_ms=4000,
                              **stack.kafka_client_config())
        assert [r for r in again] == []
        committed = {p: again.committed(TopicPartition(topic, p)) for p in seen}
        again.close()
        assert committed == {p: o + 1 for p, o in seen.items()}
    finally:
        admin.delete_topics([topic])
        admin.close()


def test_product_topics_exist(stack: Settings) -> None:
    admin = KafkaAdminClient(**stack.kafka_client_config())
    try:
        topics = set(admin.list_topics())
        described = {t["name"]: len(t["partitions"])
                     for t in admin.describe_topics([stack.topic_tasks])}
    finally:
        admin.close()
    assert {stack.topic_tasks, stack.topic_dlq, stack.topic_control,
            stack.topic_status} <= topics
    assert described[stack.topic_tasks] == stack.topic_partitions
