"""Records the Kafka client cannot decode: find them, salvage what can be read, move on.

kafka-python raises from ``poll()`` when a fetched batch cannot be decoded (a header key
that is not UTF-8, a CRC mismatch, a codec it cannot decompress, a malformed record) and
names neither the partition nor the offset; worse, its fetcher then keeps the broken
batch and the next ``poll()`` spins on it. So when ``poll()`` raises, the loop asks this
step: it reads the raw bytes at every assigned partition's position
(:mod:`bridge.rawfetch`), and where the first batch there is one the client cannot
decode (:mod:`bridge.records`), it returns a :class:`Salvage`:

    records     every offset from the position to the end of that batch, in order:
                the readable ones as ordinary records (admitted as usual), the others
                with what could be recovered (key, value, headers with their keys
                escaped) and a :class:`Problem`: ``message.undecodable`` into the DLQ
    resume_at   where the consumer seeks once the salvage is handed over

A seek away from the broken batch is also what makes the client let go of it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError

from bridge.decode import Decoded, Problem
from bridge.rawfetch import RawFetcher
from bridge.records import RawBatch, read_batches

log = logging.getLogger(__name__)

#: A batch claiming more offsets than this is not believed: step one offset at a time.
MAX_SKIP = 100_000


@dataclass
class Salvage:
    tp: TopicPartition
    resume_at: int
    records: list[ConsumerRecord] = field(default_factory=list)
    problems: dict[int, Problem] = field(default_factory=dict)  #: offset -> why


def salvage(tp: TopicPartition, position: int, data: bytes, check_crcs: bool) -> Salvage | None:
    """The salvage of ``tp`` when the client cannot decode the first batch at ``position``."""
    for batch in read_batches(data, check_crcs):
        if batch.next_offset <= position or (batch.control and batch.problem is None):
            continue
        return _salvage(tp, position, batch) if batch.undecodable else None
    return None


def _salvage(tp: TopicPartition, position: int, batch: RawBatch) -> Salvage:
    out = Salvage(tp, position)
    last = position - 1
    for raw in batch.records:
        if raw.offset < position:
            continue
        headers = [(k.decode("utf-8", "backslashreplace"), v) for k, v in raw.headers]
        out.records.append(_record(tp, batch.leader_epoch, raw.offset, raw.timestamp,
                                   raw.timestamp_type, raw.key, raw.value, headers))
        if batch.problem is not None:  # the batch as a whole: its bytes are not to be trusted
            out.problems[raw.offset] = Problem(batch.problem, trusted=False)
        elif raw.problem is not None:
            out.problems[raw.offset] = Problem(raw.problem, trusted=True)
        last = raw.offset
    end = batch.next_offset if 0 < batch.next_offset - position <= MAX_SKIP else position + 1
    if batch.problem is not None:  # offsets it could not take apart
        for offset in range(last + 1, end):
            out.records.append(_record(tp, batch.leader_epoch, offset, -1, 0, None, None, []))
            out.problems[offset] = Problem(batch.problem, trusted=False)
            last = offset
    out.resume_at = max(end, last + 1)
    return out


def _record(tp: TopicPartition, epoch: int, offset: int, timestamp: int, ts_type: int,
            key: bytes | None, value: bytes | None,
            headers: list[tuple[str, bytes | None]]) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, epoch, offset, timestamp, ts_type, key, value,
                          headers, None, len(key) if key is not None else -1,
                          len(value) if value is not None else -1, -1)


class UndecodableStep:
    """``step(consumer) -> [(Salvage, Decoded)]`` for the partitions whose position holds a
    batch the client cannot decode. Raises :class:`KafkaError` when it cannot read them."""

    def __init__(self, fetcher: RawFetcher, decode: Callable[[Salvage], Decoded],
                 check_crcs: bool) -> None:
        self.fetcher, self.decode, self.check_crcs = fetcher, decode, check_crcs

    def __call__(self, consumer: KafkaConsumer) -> list[tuple[Salvage, Decoded]]:
        positions: dict[TopicPartition, int] = {}
        for tp in consumer.assignment():
            try:
                position = consumer.position(tp, timeout_ms=5000)
            except KafkaError as exc:
                log.warning("position of %s unknown (%s); not scanned", tp, exc)
                continue
            if position is not None:
                positions[tp] = position
        if not positions:
            return []
        found = []
        for tp, data in self.fetcher.fetch(positions).items():
            found_one = salvage(tp, positions[tp], data, self.check_crcs)
            if found_one is not None:
                found.append((found_one, self.decode(found_one)))
        return found

    def close(self) -> None:
        self.fetcher.close()
