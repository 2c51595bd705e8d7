"""The commit watermark: per partition, the end of the contiguous prefix of durable offsets.

The loop ``track``s every polled offset and marks it ``done`` once it is durable in
Postgres (admitted, duplicate or rejected, and for a reject, acknowledged by the DLQ).
``offsets()`` is what may be committed: ``{tp: OffsetAndMetadata(next, "", -1)}`` for each
partition that moved since the last commit; never more than the contiguous prefix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from bridge import metrics


class Watermark:
    def __init__(self) -> None:
        self._pending: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def track(self, tp: TopicPartition, offset: int) -> None:
        """A polled offset, not yet durable (offsets arrive in increasing order).

        An offset at or below the last one tracked means the consumer's position went back
        (the partition came back with a fresh position): what was pending comes again.
        """
        pending = self._pending.setdefault(tp, deque())
        if pending and offset <= pending[-1]:
            pending.clear()
            self._done.pop(tp, None)
        pending.append(offset)

    def done(self, tp: TopicPartition, offset: int) -> None:
        """The record at ``offset`` is durable; advance over the contiguous prefix."""
        pending = self._pending.get(tp)
        if not pending:
            return
        done = self._done.setdefault(tp, set())
        done.add(offset)
        while pending and pending[0] in done:
            first = pending.popleft()
            done.discard(first)
            self._next[tp] = max(first + 1, self._next.get(tp, 0))  # never backwards

    def rewind(self, tp: TopicPartition) -> int | None:
        """Forget the partition's pending offsets; the first one, to seek back to."""
        pending = self._pending.pop(tp, None)
        self._done.pop(tp, None)
        return pending[0] if pending else None

    def offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        """Offsets to commit: partitions whose watermark moved since the last commit."""
        return {tp: OffsetAndMetadata(nxt, "", -1) for tp, nxt in self._next.items()
                if self._committed.get(tp) != nxt}

    def committed(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """A commit of ``offsets`` succeeded."""
        for topic in {tp.topic for tp in offsets}:
            metrics.COMMITS.labels(topic).inc()
        for tp, meta in offsets.items():
            self._committed[tp] = meta.offset

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Forget revoked or lost partitions: nothing is committed for them any more."""
        for tp in partitions:
            for table in (self._pending, self._done, self._next, self._committed):
                table.pop(tp, None)  # type: ignore[attr-defined]

    def pending(self) -> int:
        return sum(len(p) for p in self._pending.values())
