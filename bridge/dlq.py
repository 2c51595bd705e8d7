"""Rejected records go to the DLQ topic: original key, value and headers, plus why.

``send`` returns once every record is acknowledged by Kafka (``acks='all'``) or has
failed; the loop commits a rejected record's offset only after its acknowledgement. A
value the DLQ refuses for its size is replaced by an empty one with a header saying so
(``sonic-value-dropped: too_large``); so is the missing value of a record that had neither
key nor value (a bare tombstone, or an undecodable record nothing could be read from:
``sonic-value-dropped: absent``), which Kafka clients refuse to produce as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, MessageSizeTooLargeError

from bridge.decode import Rejection

log = logging.getLogger(__name__)

#: Header names added to a dead letter (the original headers are kept before them).
H_TOPIC = "sonic-original-topic"
H_PARTITION = "sonic-original-partition"
H_OFFSET = "sonic-original-offset"
H_CODE = "sonic-error-code"
H_MESSAGE = "sonic-error-message"
H_TASK = "sonic-task-id"
H_DROPPED = "sonic-value-dropped"


def headers(rejection: Rejection) -> list[tuple[str, bytes]]:
    record, error = rejection.record, rejection.error
    out = list(record.headers or [])
    out += [(H_TOPIC, record.topic.encode()), (H_PARTITION, str(record.partition).encode()),
            (H_OFFSET, str(record.offset).encode()), (H_CODE, error.code.encode()),
            (H_MESSAGE, error.message.encode("utf-8", "replace")[:1024])]
    if error.task_id is not None:
        out.append((H_TASK, error.task_id.encode()))
    return out


class DeadLetters:
    def __init__(self, producer: KafkaProducer, topic: str, timeout_s: float = 30.0) -> None:
        self.producer = producer
        self.topic = topic
        self.timeout_s = timeout_s

    def send(self, rejections: Sequence[Rejection]) -> list[bool]:
        """Produce every rejection and wait; True where Kafka acknowledged it."""
        pending = [self._produce(r, r.record.value) for r in rejections]
        self.producer.flush(timeout=self.timeout_s)
        acked = []
        for rejection, attempt in zip(rejections, pending):
            error = self._wait(attempt)
            if isinstance(error, MessageSizeTooLargeError):
                error = self._wait(self._produce(rejection, None, dropped=True))
            if error is not None:
                record = rejection.record
                log.error("dlq: produce of %s[%d]@%d failed: %s", record.topic,
                          record.partition, record.offset, error)
            acked.append(error is None)
        return acked

    def _produce(self, rejection: Rejection, value: bytes | None, dropped: bool = False) -> Any:
        extra = [(H_DROPPED, b"too_large")] if dropped else []
        if value is None and rejection.record.key is None:
            value, extra = b"", [(H_DROPPED, b"too_large" if dropped else b"absent")]
        try:
            return self.producer.send(self.topic, key=rejection.record.key, value=value,
                                      headers=headers(rejection) + extra)
        except KafkaError as exc:  # refused before sending (size, buffer, metadata)
            return exc

    def _wait(self, attempt: Any) -> KafkaError | None:
        if isinstance(attempt, KafkaError):
            return attempt
        try:
            attempt.get(timeout=self.timeout_s)
        except KafkaError as exc:
            return exc
        return None
