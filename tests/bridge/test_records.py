"""The tolerant batch reader: everything kafka-python fails on is read, with its problem."""

from __future__ import annotations

import struct

import pytest
from kafka.record import MemoryRecordsBuilder

from bridge import records
from bridge.records import read_batches
from tests.bridge.undecodable_records import (BAD_KEY, bad_first_record_length, patched,
                                              replace, set_codec)


def build(values: list[bytes], compression: int = 0, base_offset: int = 0,
          headers: dict[int, list[tuple[str, bytes | None]]] | None = None) -> bytes:
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 20)
    for i, value in enumerate(values):
        builder.append(timestamp=1_000 + i, key=b"k%d" % i, value=value,
                       headers=(headers or {}).get(i, []))
    builder.close()
    data = bytearray(builder.buffer())
    struct.pack_into(">q", data, 0, base_offset)  # not covered by the CRC
    return bytes(data)


VALUES = [b"v0", b"v1" * 40, b"v2"]


@pytest.mark.parametrize("compression", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4",
                                                            "zstd"])
def test_a_good_batch_reads_as_the_client_reads_it(compression: int) -> None:
    data = build(VALUES, compression, base_offset=40, headers={1: [("h", b"x"), ("n", None)]})
    (batch,) = read_batches(data)
    assert (batch.base_offset, batch.next_offset, batch.problem) == (40, 43, None)
    assert not batch.undecodable
    assert [(r.offset, r.key, r.value, r.timestamp) for r in batch.records] == [
        (40 + i, b"k%d" % i, v, 1_000 + i) for i, v in enumerate(VALUES)]
    assert batch.records[1].headers == [(b"h", b"x"), (b"n", None)]


@pytest.mark.parametrize("bad_key", [BAD_KEY, b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80"])
def test_a_header_key_that_is_not_utf8_marks_only_its_record(bad_key: bytes) -> None:
    placeholder = b"Z" * len(bad_key)
    data = patched(build(VALUES, headers={1: [(placeholder.decode(), b"v")]}),
                   replace(placeholder, bad_key), fix_crc=True)
    (batch,) = read_batches(data)
    assert batch.problem is None and batch.undecodable
    assert [r.problem is None for r in batch.records] == [True, False, True]
    assert "not UTF-8" in batch.records[1].problem  # type: ignore[operator]
    assert batch.records[1].headers == [(bad_key, b"v")] and batch.records[1].value == VALUES[1]


def test_a_crc_mismatch_marks_the_batch_and_keeps_what_it_read() -> None:
    data = patched(build(VALUES), replace(b"v2", b"v3"), fix_crc=False)
    (batch,) = read_batches(data)
    assert "CRC" in batch.problem  # type: ignore[operator]
    assert [r.value for r in batch.records] == [b"v0", VALUES[1], b"v3"]
    (unchecked,) = read_batches(data, check_crcs=False)
    assert not unchecked.undecodable  # as the client does without CRC checks


@pytest.mark.parametrize(("change", "words"), [
    (set_codec(7), "unknown compression codec"),
    (set_codec(5), "unknown compression codec"),
    (bad_first_record_length, "malformed record"),
    (lambda b: b.extend(b"\x00\x00"), "unconsumed bytes"),
], ids=["codec-7", "codec-5", "record-length", "trailing-bytes"])
def test_a_batch_the_client_cannot_take_apart_has_a_problem(change, words: str) -> None:
    def grow_length(batch: bytearray) -> None:
        change(batch)
        struct.pack_into(">i", batch, 8, len(batch) - 12)
    (batch,) = read_batches(patched(build(VALUES), grow_length, fix_crc=True))
    assert words in batch.problem and batch.undecodable  # type: ignore[operator]
    assert batch.next_offset == 3


def test_compressed_data_that_does_not_decompress_is_a_problem() -> None:
    data = build(VALUES * 20, compression=1)
    middle = 61 + (len(data) - 61) // 2
    (batch,) = read_batches(patched(data, lambda b: b.__setitem__(
        slice(middle, middle + 8), bytes(8)), fix_crc=True))
    assert "gzip" in batch.problem and batch.records == []  # type: ignore[operator]


def test_a_codec_that_is_not_installed_is_a_problem(monkeypatch) -> None:
    name, _, decode = records._CODECS[4]
    monkeypatch.setitem(records._CODECS, 4, (name, lambda: False, decode))
    (batch,) = read_batches(build(VALUES, compression=4))
    assert batch.problem == "compression codec zstd is not installed"


def test_batches_follow_each_other_and_a_cut_last_one_ends_the_read() -> None:
    first, second = build(VALUES, base_offset=0), build([b"x"], base_offset=3)
    batches = list(read_batches(first + second + second[:30]))
    assert [(b.base_offset, b.next_offset) for b in batches] == [(0, 3), (3, 4)]
    (cut,) = read_batches(first[:40])  # a first batch cut short is corrupt
    assert "cut short" in cut.problem or "header" in cut.problem  # type: ignore[operator]
    (short,) = read_batches(first[:70])
    assert "cut short" in short.problem  # type: ignore[operator]
    assert list(read_batches(b"")) == [] and list(read_batches(b"\x00" * 5)) == []


def test_a_control_batch_has_no_records() -> None:
    data = patched(build([b"x"]), lambda b: b.__setitem__(22, b[22] | 0x20), fix_crc=True)
    (batch,) = read_batches(data)
    assert batch.control and batch.records == [] and batch.problem is None


def test_a_varint_running_past_the_end_is_malformed() -> None:
    def cut_record(batch: bytearray) -> None:
        del batch[-3:]
        struct.pack_into(">i", batch, 8, len(batch) - 12)
    (batch,) = read_batches(patched(build(VALUES), cut_record, fix_crc=True))
    assert "malformed record" in batch.problem  # type: ignore[operator]
    assert [r.value for r in batch.records] == VALUES[:2]


def test_an_old_message_format_is_a_problem() -> None:
    data = bytearray(build(VALUES))
    data[16] = 1
    (batch,) = read_batches(bytes(data))
    assert "format v1" in batch.problem  # type: ignore[operator]
