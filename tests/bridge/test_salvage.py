"""Salvaging a batch the client cannot decode, and what the loop does when poll() raises."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import CorruptRecordError

from bridge.commit import Watermark
from bridge.decode import Decoded, decode_batch
from bridge.guard import InvalidRatio
from bridge.loop import Loop
from bridge.undecodable import MAX_SKIP, salvage
from pipeline.settings import load
from tests.bridge.test_records import build
from tests.bridge.undecodable_records import BAD_KEY, patched, replace, set_codec
from tests.pipeline.checks import callback_scheme_check, scheme_check

TP = TopicPartition("t", 0)
JOB = b'{"task_id": "%s", "audio_url": "/uploads/a.mp3", "image_url": "/uploads/a.jpg"}'


def jobs(*ids: str) -> list[bytes]:
    return [JOB % i.encode() for i in ids]


def bad_middle(base_offset: int = 10) -> bytes:
    return patched(build(jobs("a", "b", "c"), base_offset=base_offset,
                         headers={1: [("kZ", b"v")]}), replace(b"kZ", BAD_KEY), fix_crc=True)


def test_a_bad_header_key_is_salvaged_with_the_good_records_of_its_batch() -> None:
    found = salvage(TP, 10, bad_middle(), check_crcs=True)
    assert found is not None and found.resume_at == 13
    assert [r.offset for r in found.records] == [10, 11, 12]
    assert set(found.problems) == {11} and found.problems[11].trusted
    record = found.records[1]
    assert record.headers == [("k\\xff", b"v")] and record.value == jobs("b")[0]
    decoded = decode_batch(found.records, load(), scheme_check, callback_scheme_check,
                           problems=found.problems)
    assert [row[0] for row in decoded.rows] == ["a", "c"] and decoded.invalid == [0, 1, 0]
    (rejection,) = decoded.rejections
    assert rejection.error.code == "message.undecodable" and rejection.error.task_id == "b"
    assert (rejection.error.partition, rejection.error.offset) == (0, 11)


def test_from_the_middle_of_a_batch_only_the_offsets_from_the_position_come() -> None:
    found = salvage(TP, 11, bad_middle(), check_crcs=True)
    assert found is not None and [r.offset for r in found.records] == [11, 12]


def test_a_readable_first_batch_is_not_salvaged() -> None:
    data = build(jobs("a", "b"), base_offset=10) + bad_middle(base_offset=12)
    assert salvage(TP, 10, data, check_crcs=True) is None  # the client reads 10-11 first
    assert salvage(TP, 12, data, check_crcs=True) is not None
    assert salvage(TP, 20, data, check_crcs=True) is None  # nothing at 20


def test_a_crc_mismatch_rejects_every_record_untrusted() -> None:
    data = patched(build(jobs("a", "b"), base_offset=5), replace(b'"a"', b'"x"'), fix_crc=False)
    found = salvage(TP, 5, data, check_crcs=True)
    assert found is not None and found.resume_at == 7
    assert {o: p.trusted for o, p in found.problems.items()} == {5: False, 6: False}
    decoded = decode_batch(found.records, load(), problems=found.problems)
    assert [r.error.task_id for r in decoded.rejections] == [None, None]  # bytes not trusted


def test_offsets_that_cannot_be_taken_apart_each_get_a_record() -> None:
    data = patched(build(jobs("a", "b", "c"), base_offset=7), set_codec(6), fix_crc=True)
    found = salvage(TP, 8, data, check_crcs=True)
    assert found is not None and found.resume_at == 10
    assert [(r.offset, r.value, r.key) for r in found.records] == [(8, None, None),
                                                                  (9, None, None)]
    assert all("codec" in p.reason for p in found.problems.values())


def test_an_unbelievable_batch_header_moves_one_offset() -> None:
    def huge_delta(batch: bytearray) -> None:
        batch[23:27] = (MAX_SKIP + 5).to_bytes(4, "big")
        set_codec(6)(batch)
    data = patched(build(jobs("a")), huge_delta, fix_crc=True)
    found = salvage(TP, 0, data, check_crcs=True)
    assert found is not None and found.resume_at == 1 and list(found.problems) == [0]


# --- the loop ------------------------------------------------------------------------------

class Consumer:
    """poll() raises once; records seeks, subscriptions and commits."""

    def __init__(self) -> None:
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.calls: list[str] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict:  # type: ignore[type-arg]
        raise CorruptRecordError("Found invalid record structure: UnicodeDecodeError(...)")

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def commit(self, offsets: dict) -> None:  # type: ignore[type-arg]
        self.calls.append("commit")

    def unsubscribe(self) -> None:
        self.calls.append("unsubscribe")

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.calls.append(f"subscribe {topics}")


class Batches:
    def __init__(self) -> None:
        self.submitted: list[Decoded] = []

    def submit(self, batch: Decoded) -> None:
        self.submitted.append(batch)

    def outcomes(self, wait: bool = False) -> list:  # type: ignore[type-arg]
        return []


class Shutdown:
    requested = False


def loop(undecodable: Any) -> Loop:
    out = Loop.__new__(Loop)
    out.consumer, out.rebalance, out.topic = Consumer(), None, "t"  # type: ignore[assignment]
    out.poll_timeout_ms, out.undecodable, out.watermark = 10, undecodable, Watermark()
    out.guard, out.batches = InvalidRatio(0.9, 10), Batches()  # type: ignore[assignment]
    out.submitted, out.shutdown, out._backoff = 0, Shutdown(), 0.0  # type: ignore[assignment]
    return out


def test_a_poll_that_raises_hands_the_salvage_over_and_seeks_past_it() -> None:
    found = salvage(TP, 10, bad_middle(), check_crcs=True)
    assert found is not None
    decoded = decode_batch(found.records, load(), scheme_check, callback_scheme_check,
                           problems=found.problems)
    subject = loop(lambda consumer: [(found, decoded)])
    assert subject._poll(100) == {}
    assert subject.consumer.seeks == [(TP, 13)]  # type: ignore[attr-defined]
    assert subject.batches.submitted == [decoded]  # type: ignore[attr-defined]
    assert subject.submitted == 2 and subject.watermark.pending() == 3
    for offset in (10, 11, 12):
        subject.watermark.done(TP, offset)
    assert subject.watermark.offsets()[TP].offset == 13  # the commit moves past it


@pytest.mark.parametrize("step", [None, lambda consumer: [],
                                  lambda consumer: (_ for _ in ()).throw(OSError("down"))])
def test_when_nothing_is_located_the_loop_commits_and_subscribes_again(step: Any) -> None:
    subject = loop(step)
    assert subject._poll(100) == {}
    assert subject.consumer.calls[-2:] == ["unsubscribe", "subscribe ['t']"]  # type: ignore
    assert subject.consumer.seeks == []  # type: ignore[attr-defined]

