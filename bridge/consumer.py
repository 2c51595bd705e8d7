"""The Kafka consumer, its rebalance listener, and the lag it reports.

kafka-python 3.x runs rebalance listeners on its IO thread, where a blocking call such
as ``commit()`` raises: the listener only records what changed and re-applies the pause
to new partitions; the loop drops revoked state and commits from the main thread.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from pipeline.settings import Settings


#: CRC-32C of fetched batches in pure Python costs ~80 us a record (kafka-python uses the
#: ``crc32c`` C extension when it is installed): checked only when that is cheap. The
#: broker checks CRCs on produce, TCP checksums the wire, and a corrupted value fails JSON
#: validation into the DLQ.
CHECK_CRCS = importlib.util.find_spec("crc32c") is not None


def make_consumer(settings: Settings, bootstrap_timeout_ms: int = 10_000) -> KafkaConsumer:
    return KafkaConsumer(
        group_id=settings.consumer_group,
        group_instance_id=settings.kafka_group_instance_id,
        client_id=f"sonic-bridge-{socket.gethostname()}-{os.getpid()}",
        enable_auto_commit=False,
        check_crcs=CHECK_CRCS,
        auto_offset_reset="earliest",
        max_poll_records=settings.bridge_batch_max,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.kafka_session_timeout_ms // 5),
        bootstrap_timeout_ms=bootstrap_timeout_ms,
        **settings.kafka_client_config(),
    )


class Rebalance(ConsumerRebalanceListener):
    """Records revoked/lost partitions for the loop; keeps new ones paused when paused."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer
        self.paused = False
        self._lock = threading.Lock()
        self._gone: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._forget(revoked)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self._forget(lost)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        if self.paused and assigned:
            self.consumer.pause(*assigned)

    def take_gone(self) -> set[TopicPartition]:
        """Partitions revoked or lost since the last call (the loop drops their state)."""
        with self._lock:
            gone, self._gone = self._gone, set()
        return gone

    def _forget(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            self._gone.update(partitions)


def lag(consumer: KafkaConsumer) -> int:
    """Sum over the assigned partitions of end offset minus the group's committed offset."""
    assigned = list(consumer.assignment())
    if not assigned:
        return 0
    ends = consumer.end_offsets(assigned)
    committed = {tp: consumer.committed(tp) for tp in assigned}
    missing = [tp for tp, offset in committed.items() if offset is None]
    if missing:
        committed.update(consumer.beginning_offsets(missing))
    return sum(max(0, ends.get(tp, 0) - (committed[tp] or 0)) for tp in assigned)
