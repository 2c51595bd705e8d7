"""Every Kafka client waits at most ``SONIC_KAFKA_RECONNECT_BACKOFF_MAX_MS`` between two
tries to reach a broker: kafka-python's default (30 s) kept the bridge idle for up to
30 s after a restarted broker was back (the Kafka restart scenario of
``tests/chaos/scenarios_services.py`` measures the whole recovery)."""

from __future__ import annotations

from kafka import KafkaAdminClient

from bridge.consumer import make_consumer
from pipeline.settings import Settings, load
from pipeline.status.sink import producer_factory


def test_the_default_cap_is_a_second_and_every_client_config_carries_it() -> None:
    settings = load()
    assert settings.kafka_reconnect_backoff_max_ms == 1000
    assert settings.kafka_client_config()["reconnect_backoff_max_ms"] == 1000
    moved = load(kafka_reconnect_backoff_max_ms=250)
    assert moved.kafka_client_config()["reconnect_backoff_max_ms"] == 250


def test_the_bridge_consumer_relay_producer_and_admin_use_the_cap(stack: Settings) -> None:
    settings = stack.model_copy(update={"kafka_reconnect_backoff_max_ms": 400,
                                        "consumer_group": "reconnect-cap-test"})
    consumer = make_consumer(settings)
    producer = producer_factory(settings)()
    admin = KafkaAdminClient(**settings.kafka_client_config())
    try:
        for client in (consumer, producer):
            assert client.config["reconnect_backoff_max_ms"] == 400
        assert admin.config["reconnect_backoff_max_ms"] == 400
    finally:
        consumer.close()
        producer.close()
        admin.close()
