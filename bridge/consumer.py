"""The Kafka consumer, its rebalance listener, and the lag it reports.

kafka-python 3.x runs rebalance listeners on its IO thread, where a blocking call such
as ``commit()`` raises: the listener only records what changed and re-applies the pause
to new partitions; the loop drops the state of partitions that went away and commits from
the main thread.

Under the eager protocol every rebalance revokes every partition, but kafka-python keeps
the position of a partition that the same member gets back: Kafka will not deliver its
in-flight records again, so their offsets must stay tracked and be committed once durable.
Only partitions lost, or revoked and not assigned back, are gone.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener

from bridge import kafka_pin
from pipeline.settings import Settings


#: CRC-32C of fetched batches in pure Python costs ~80 us a record (kafka-python uses the
#: ``crc32c`` C extension when it is installed): checked only when that is cheap. The
#: broker checks CRCs on produce, TCP checksums the wire, and a corrupted value fails JSON
#: validation into the DLQ.
CHECK_CRCS = importlib.util.find_spec("crc32c") is not None


def make_consumer(settings: Settings, bootstrap_timeout_ms: int = 10_000) -> KafkaConsumer:
    consumer = KafkaConsumer(
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
    _finish_joins(consumer)
    return consumer


def _finish_joins(consumer: KafkaConsumer) -> None:
    """Never leave a JoinGroup/SyncGroup round unfinished (kafka-python 3.0.12, private
    names: see :mod:`bridge.kafka_pin`).

    ``poll()`` drives a rebalance as a task and returns when its timeout expires, to await
    the same task at the next ``poll()`` - but only while ``need_rejoin()`` holds. A leader
    whose rejoin was caused by a metadata change records the new metadata when it computes
    the assignment, inside that task; if the task finishes between two polls,
    ``need_rejoin()`` is already false, the assignment is never applied, the partitions stay
    pending revocation with heartbeats disabled, and the consumer fetches nothing again.
    Here a round in flight, or finished but not applied, still counts as a rejoin: the next
    ``poll()`` completes it (a finished one costs one more JoinGroup).
    """
    kafka_pin.missing(consumer, ("_coordinator",), "bridge/consumer.py")
    coordinator = consumer._coordinator
    kafka_pin.missing(coordinator, ("_join_task", "need_rejoin"), "bridge/consumer.py")
    need_rejoin = coordinator.need_rejoin

    def need_rejoin_or_unfinished() -> bool:
        return coordinator._join_task is not None or need_rejoin()

    coordinator.need_rejoin = need_rejoin_or_unfinished


class Rebalance(ConsumerRebalanceListener):
    """Records the partitions that went away for the loop; keeps new ones paused when paused."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self.consumer = consumer
        self.paused = False
        self._lock = threading.Lock()
        self._gone: set[TopicPartition] = set()
        self._revoked: set[TopicPartition] = set()

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        with self._lock:  # gone unless the assignment that follows gives them back
            self._revoked.update(revoked)

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self._forget(lost)  # their positions are reset: the records come again

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = set(assigned)
        with self._lock:
            self._gone.update(self._revoked - assigned)
            self._revoked.clear()
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
