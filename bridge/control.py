"""The control topic (``SONIC_TOPIC_CONTROL``): commands for jobs, applied in PostgreSQL.

Each bridge runs one consumer of it on a thread of its own, in a consumer group of its own
(``<SONIC_CONSUMER_GROUP>-control``). A record's value is a JSON object, keyed by task id:

    {"command": "cancel", "task_id": "3f6c..."}
    {"command": "cancel", "task_ids": ["a", "b"], "reason": "user left"}

``cancel`` applies :func:`pipeline.scheduler.cancel.cancel_ahead` (every state: not
dispatched, queued, running, final; ``sonic-pipeline cancel`` applies the same). An id not
admitted yet gets a ``cancelled`` row at once (its tombstone): when its job message comes,
the job never runs, and its ``cancelled`` callback is owed to the URL the message names.
The control message wins whichever arrives first.

Offsets are committed by hand, after the batch's commands are durable in PostgreSQL and its
bad records acknowledged by the DLQ (at-least-once; a cancel applied twice answers
"already final" the second time). A database or DLQ failure rewinds the batch and retries
after a back-off. A bad record (not JSON, not an object, an unknown command, a missing or
malformed id) is logged, counted (``sonic_control_invalid_total{code}``) and dead-lettered
with the DLQ's reason headers; the partition moves on and nothing crashes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import OffsetAndMetadata
from sqlalchemy import Engine

from bridge.consumer import make_consumer as make_task_consumer
from bridge.decode import Rejection
from bridge.dlq import DeadLetters
from bridge.errors import TRANSIENT
from bridge.services import kafka
from pipeline.errors import InvalidMessage
from pipeline.job_ids import is_task_id, strip_bom
from pipeline.scheduler import metrics
from pipeline.scheduler.cancel import DEFAULT_REASON, cancel_ahead, reason_kept
from pipeline.settings import Settings

log = logging.getLogger(__name__)

#: Commands the control topic understands.
COMMANDS = ("cancel",)


@dataclass
class Command:
    """One valid control record: ``cancel`` of ``task_ids`` for ``reason``."""

    command: str
    task_ids: list[str]
    reason: str = DEFAULT_REASON


@dataclass
class Batch:
    commands: list[Command] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    #: The next offset per partition once this batch is applied.
    positions: dict[TopicPartition, int] = field(default_factory=dict)
    #: The first offset per partition (where a failed batch is read again).
    starts: dict[TopicPartition, int] = field(default_factory=dict)


def parse(record: ConsumerRecord, max_bytes: int) -> Command | InvalidMessage:
    """The command in ``record``, or why it is refused (an :class:`InvalidMessage` with
    ``message.*`` or ``task.invalid_id`` code)."""
    where = {"partition": record.partition, "offset": record.offset}
    value = record.value
    if value is None:
        return InvalidMessage("a control record without a value", **where)
    if len(value) > max_bytes:
        return InvalidMessage(f"a control record of {len(value)} bytes (at most {max_bytes})",
                              code="message.too_large", **where)
    try:
        data = json.loads(strip_bom(value))
    except (ValueError, UnicodeDecodeError) as exc:
        return InvalidMessage(f"a control record that is not JSON: {exc}", **where)
    if not isinstance(data, dict):
        return InvalidMessage("a control record must be a JSON object", **where)
    command = data.get("command")
    if command is None:
        return InvalidMessage("a control record needs 'command'",
                              code="message.missing_field", **where)
    if command not in COMMANDS:
        return InvalidMessage(f"unknown command {str(command)[:100]!r} (known: "
                              f"{', '.join(COMMANDS)})", code="message.unknown_command", **where)
    ids: list[Any] = []
    if "task_id" in data and data["task_id"] is not None:
        ids.append(data["task_id"])
    many = data.get("task_ids")
    if many is not None:
        if not isinstance(many, list):
            return InvalidMessage("'task_ids' must be a list of task ids",
                                  code="message.wrong_type", **where)
        ids.extend(many)
    if not ids:
        return InvalidMessage("a cancel needs 'task_id' or 'task_ids'",
                              code="message.missing_field", **where)
    bad = [i for i in ids if not is_task_id(i)]
    if bad:
        return InvalidMessage(f"not a task id: {str(bad[0])[:140]!r}", code="task.invalid_id",
                              **where)
    reason = data.get("reason", DEFAULT_REASON)
    if reason is None:
        reason = DEFAULT_REASON
    if not isinstance(reason, str):
        return InvalidMessage("'reason' must be a string", code="message.wrong_type", **where)
    return Command(command, list(dict.fromkeys(ids)), reason_kept(reason))


def apply_cancel(db_engine: Engine, topic: str, task_ids: list[str],
                 reason: str) -> dict[str, str]:
    """Cancel ``task_ids``; an id not admitted yet gets its tombstone in ``topic``
    (:func:`pipeline.scheduler.cancel.cancel_ahead`, ``cancelled_before_admission``).
    Raises the driver's errors."""
    return cancel_ahead(db_engine, topic, task_ids, reason)


class Control:
    """The control consumer's loop (see the module docstring)."""

    def __init__(self, consumer: KafkaConsumer, db_engine: Engine, dead_letters: DeadLetters,
                 tasks_topic: str, max_bytes: int, poll_ms: int = 200) -> None:
        self.consumer, self.db, self.dead_letters = consumer, db_engine, dead_letters
        self.tasks_topic, self.max_bytes, self.poll_ms = tasks_topic, max_bytes, poll_ms
        self._backoff = 0.0

    def run(self, stop: threading.Event) -> None:
        """Poll, apply, commit until ``stop`` is set; service errors back off and retry."""
        while not stop.is_set():
            try:
                self.once()
                self._backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - this thread must never die
                self._backoff = min(5.0, max(0.2, self._backoff * 2))
                level = logging.WARNING if isinstance(exc, TRANSIENT) else logging.ERROR
                log.log(level, "control: %s: %s; retrying in %.1f s", type(exc).__name__,
                        (str(exc).splitlines() or [""])[0], self._backoff,
                        exc_info=level == logging.ERROR)
                stop.wait(self._backoff)

    def once(self) -> int:
        """One poll: apply its commands, dead-letter its bad records, commit. Returns the
        records handled. On a failure the batch is read again (its partitions rewound)."""
        polled = self.consumer.poll(timeout_ms=self.poll_ms, max_records=500)
        batch = Batch()
        for tp, records in polled.items():
            for record in records:
                batch.starts.setdefault(tp, record.offset)
                batch.positions[tp] = record.offset + 1
                found = parse(record, self.max_bytes)
                if isinstance(found, InvalidMessage):
                    batch.rejections.append(Rejection(record, found))
                else:
                    batch.commands.append(found)
        if not batch.positions:
            return 0
        try:
            self._apply(batch)
        except BaseException:
            self._rewind(batch)
            raise
        self.consumer.commit({tp: OffsetAndMetadata(offset, "", -1)
                              for tp, offset in batch.positions.items()})
        return sum(len(records) for records in polled.values())

    def _apply(self, batch: Batch) -> None:
        for rejection in batch.rejections:
            error = rejection.error
            log.warning("control: %s[%d]@%d refused (%s): %s", rejection.record.topic,
                        rejection.record.partition, rejection.record.offset, error.code,
                        error.message)
        if batch.rejections and not all(self.dead_letters.send(batch.rejections)):
            raise OSError("the DLQ did not acknowledge every refused control record")
        for rejection in batch.rejections:
            metrics.CONTROL_INVALID.labels(rejection.error.code).inc()
        # In record order; consecutive commands with the same reason are one statement.
        runs: list[tuple[str, list[str]]] = []
        for command in batch.commands:
            if runs and runs[-1][0] == command.reason:
                runs[-1][1].extend(command.task_ids)
            else:
                runs.append((command.reason, list(command.task_ids)))
        outcomes: list[str] = []
        for reason, ids in runs:
            done = apply_cancel(self.db, self.tasks_topic, list(dict.fromkeys(ids)), reason)
            log.info("control: cancel (%s): %s", reason,
                     ", ".join(f"{t} {o}" for t, o in list(done.items())[:20]))
            outcomes += [o.split(":")[0].replace(" ", "_") for o in done.values()]
        for outcome in outcomes:
            metrics.CONTROL_COMMANDS.labels("cancel", outcome).inc()

    def _rewind(self, batch: Batch) -> None:
        for tp, offset in batch.starts.items():
            try:
                self.consumer.seek(tp, offset)
            except Exception:  # noqa: BLE001 - no longer ours: its new owner reads it
                pass


def make_consumer(settings: Settings) -> KafkaConsumer:
    """The control topic's consumer: the task consumer's configuration (manual commits,
    from the earliest, its fix of kafka-python's join race) in a group of its own."""
    consumer = make_task_consumer(
        settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-control",
                                    "bridge_batch_max": 500}),
        bootstrap_timeout_ms=int(settings.kafka_bootstrap_timeout_s * 1000))
    consumer.subscribe([settings.topic_control])
    return consumer


@contextmanager
def running(settings: Settings, db_engine: Engine, producer: KafkaProducer) -> Iterator[Control]:
    """The control consumer on a thread of its own while the bridge runs; on exit the
    thread finishes its batch and the consumer leaves its group."""
    consumer = kafka(settings, lambda: make_consumer(settings))
    control = Control(consumer, db_engine, DeadLetters(producer, settings.topic_dlq),
                      settings.topic_tasks, settings.max_message_bytes)
    stop = threading.Event()
    thread = threading.Thread(target=control.run, args=(stop,), name="control", daemon=True)
    thread.start()
    try:
        yield control
    finally:
        stop.set()
        thread.join(timeout=30)
        consumer.close(autocommit=False)
