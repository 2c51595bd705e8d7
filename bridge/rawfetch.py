"""The raw record bytes of partitions, fetched past kafka-python's decoding.

kafka-python has no public call that returns the bytes of a record it cannot decode, so
this module sends a plain (sessionless) Fetch request through a group-less client of its
own, using kafka-python internals: ``KafkaConsumer._manager`` (``send``, ``wait_for``,
``cluster.leader_for_partition``), ``KafkaConsumer._net.run`` and the
``kafka.protocol.consumer.FetchRequest`` schema. They are those of the kafka-python
release :mod:`bridge.kafka_pin` checks at the bridge's start (exit 3 on any other).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.protocol.consumer import FetchRequest

from bridge import kafka_pin
from pipeline.errors import ConfigError

log = logging.getLogger(__name__)

#: Bytes asked per partition (the broker returns at least one whole batch, KIP-74).
PARTITION_MAX_BYTES = 1024 * 1024
_NEEDED = ("_manager", "_net")


class RawFetcher:
    """``fetch({tp: offset}) -> {tp: record bytes}`` from each partition's leader.

    ``make_client`` builds the group-less consumer it talks through (once, on first use).
    Raises :class:`KafkaError` when a leader cannot be reached in ``timeout_ms``.
    """

    def __init__(self, make_client: Callable[[], KafkaConsumer], timeout_ms: int = 10_000) -> None:
        self.make_client = make_client
        self.timeout_ms = timeout_ms
        self._client: KafkaConsumer | None = None

    def fetch(self, positions: dict[TopicPartition, int]) -> dict[TopicPartition, bytes]:
        client = self._connect()
        manager = client._manager
        by_leader: dict[int, dict[TopicPartition, int]] = defaultdict(dict)
        for tp, offset in positions.items():
            client.partitions_for_topic(tp.topic)  # metadata, public
            leader = manager.cluster.leader_for_partition(tp)
            if leader is None or leader < 0:
                raise KafkaError(f"no leader known for {tp}")
            by_leader[leader][tp] = offset
        out: dict[TopicPartition, bytes] = {}
        for leader, wanted in by_leader.items():
            future = manager.send(_request(wanted), node_id=leader)
            response = client._net.run(manager.wait_for, future, self.timeout_ms)
            for topic in response.responses:
                for part in topic.partitions:
                    tp = TopicPartition(topic.topic, part.partition_index)
                    if part.error_code:
                        log.warning("raw fetch of %s: error code %d", tp, part.error_code)
                        continue
                    out[tp] = bytes(part.records or b"")
        return out

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _connect(self) -> KafkaConsumer:
        if self._client is None:
            client = self.make_client()
            try:
                kafka_pin.missing(client, _NEEDED, "bridge/rawfetch.py")
            except ConfigError:
                client.close()
                raise
            self._client = client
        return self._client


def _request(wanted: dict[TopicPartition, int]) -> FetchRequest:
    topics: dict[str, list[FetchRequest.FetchTopic.FetchPartition]] = defaultdict(list)
    for tp, offset in wanted.items():
        topics[tp.topic].append(FetchRequest.FetchTopic.FetchPartition(
            partition=tp.partition, current_leader_epoch=-1, fetch_offset=offset,
            last_fetched_epoch=-1, log_start_offset=-1, partition_max_bytes=PARTITION_MAX_BYTES))
    return FetchRequest(
        max_wait_ms=0, min_bytes=0, max_bytes=8 * PARTITION_MAX_BYTES, isolation_level=0,
        session_id=0, session_epoch=-1,  # a full fetch outside any fetch session
        topics=[FetchRequest.FetchTopic(topic=t, partitions=p) for t, p in topics.items()],
        forgotten_topics_data=[], rack_id="", max_version=12)
