"""Step 1: decode and validate each record into a task row, or a rejection.

A record the Kafka client could not decode (salvaged by :mod:`bridge.undecodable`) comes
with its :class:`Problem` and is rejected as ``message.undecodable``; its task id is read
from its value only when its bytes can be trusted (a bad header key, not a bad CRC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from bridge.urls import CallbackChecks, InputChecks
from pipeline.errors import InputError, InvalidMessage
from pipeline.job_ids import peek_callback_url
from pipeline.jobs import UrlCheck, decode, default_checks, peek_task_id
from pipeline.settings import Settings
from pipeline.state.admission import RejectRow


@dataclass(frozen=True)
class Problem:
    """Why the client cannot decode a record; ``trusted``: its key and value are intact."""

    reason: str
    trusted: bool


@dataclass(frozen=True)
class Rejection:
    record: ConsumerRecord
    error: InvalidMessage
    callback_url: str | None = None  #: an allowed callback URL the message named

    def row(self) -> RejectRow | None:
        """The ``rejected`` task row, when the message named a task id."""
        if self.error.task_id is None:
            return None
        return RejectRow(self.error.task_id, self.record.topic, self.record.partition,
                         self.record.offset, key_text(self.record.key), self.error.code,
                         self.error.message.replace("\x00", ""), self.callback_url)


@dataclass
class Decoded:
    records: list[ConsumerRecord] = field(default_factory=list)  #: every record, in order
    rows: list[tuple[Any, ...]] = field(default_factory=list)  #: admission rows
    row_records: list[ConsumerRecord] = field(default_factory=list)  #: parallel to rows
    rejections: list[Rejection] = field(default_factory=list)
    invalid: list[bool] = field(default_factory=list)  #: per record, in order


def undecodable(record: ConsumerRecord, problem: Problem) -> InvalidMessage:
    """``message.undecodable`` for a record the client cannot decode."""
    return InvalidMessage(
        f"the Kafka client cannot decode the record at {record.topic}[{record.partition}]"
        f"@{record.offset}: {problem.reason}", code="message.undecodable",
        partition=record.partition, offset=record.offset,
        task_id=peek_task_id(record.value) if problem.trusted else None)


def _callback_of(value: bytes | None, error: InvalidMessage, settings: Settings,
                 check: UrlCheck | None) -> str | None:
    """Where to deliver a rejection: the message's callback URL when it names a task id
    and the URL passes the same check as an admitted job's; else None."""
    if error.task_id is None or error.code == "message.undecodable":
        return None
    url = peek_callback_url(value)
    if url is None:
        return None
    try:
        (check or default_checks()[1])(url, settings)
    except InputError:
        return None
    return url


def key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    return key.decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


class DecodeStep:
    """Decodes a batch; the URL checks are memoised across batches (see bridge.urls)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        check_url, check_callback = default_checks()
        self.check_url = InputChecks(check_url)
        self.check_callback = CallbackChecks(check_callback)

    def __call__(self, records: list[ConsumerRecord]) -> Decoded:
        return decode_batch(records, self.settings, self.check_url, self.check_callback)

    def salvaged(self, salvage: Any) -> Decoded:
        """A :class:`bridge.undecodable.Salvage`: its ``records`` with their ``problems``."""
        return decode_batch(salvage.records, self.settings, self.check_url,
                            self.check_callback, problems=salvage.problems)


def decode_batch(records: list[ConsumerRecord], settings: Settings,
                 check_url: UrlCheck | None = None,
                 check_callback: UrlCheck | None = None,
                 problems: dict[int, Problem] | None = None) -> Decoded:
    out = Decoded(records=records)
    for record in records:
        try:
            problem = problems.get(record.offset) if problems else None
            if problem is not None:
                raise undecodable(record, problem)
            job = decode(record.value, settings, check_url=check_url,
                         check_callback=check_callback)
        except InvalidMessage as exc:
            exc.partition, exc.offset = record.partition, record.offset
            out.rejections.append(Rejection(record, exc, _callback_of(
                record.value, exc, settings, check_callback)))
            out.invalid.append(True)
            continue
        key = key_text(record.key)
        out.rows.append((
            job.task_id, record.topic, record.partition, record.offset, key,
            job.ordering_key if job.ordering_key is not None else key,
            job.tenant, job.user_id, job.priority, job.engine, job.depends_on,
            job.deadline_at(record.timestamp), job.payload_json(), job.config_json(),
            job.callback_url,
        ))
        out.row_records.append(record)
        out.invalid.append(False)
    return out
