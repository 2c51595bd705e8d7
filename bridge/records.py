"""A tolerant reader of Kafka record batches (message format v2), for records the client
cannot decode.

kafka-python fails a whole fetch on the first thing it cannot decode: a batch whose
CRC-32C does not match (when it checks CRCs), a compression codec it cannot decompress,
a malformed record, a header key that is not UTF-8. This reader goes through the same
bytes without failing: every record it can parse comes back with its key, value and
headers (header keys as raw bytes), each with the ``problem`` the client would have met,
and a batch it cannot take apart comes back with its offsets and a batch ``problem``.

    read_batches(data, check_crcs) -> [RawBatch(base_offset, next_offset, problem,
                                                 records=[RawRecord(offset, ..., problem)])]

Batch layout (v2): baseOffset i64, batchLength i32, partitionLeaderEpoch i32, magic i8,
crc u32 (CRC-32C of attributes..end), attributes i16, lastOffsetDelta i32,
baseTimestamp i64, maxTimestamp i64, producerId i64, producerEpoch i16, baseSequence i32,
recordCount i32, then the records (compressed together when attributes & 7).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from crc32c import crc32c
from kafka import codec

_HEADER = struct.Struct(">qiiBIhiqqqhii")  # 61 bytes
_CRC_FROM = 21  # attributes: where the checksum starts
_CODECS: dict[int, tuple[str, Callable[[], bool], Callable[[bytes], bytes] | None]] = {
    1: ("gzip", codec.has_gzip, codec.gzip_decode),
    2: ("snappy", codec.has_snappy, codec.snappy_decode),
    3: ("lz4", codec.has_lz4, codec.lz4_decode),
    4: ("zstd", codec.has_zstd, codec.zstd_decode),
}
_LOG_APPEND_TIME, _CONTROL = 0x08, 0x20


@dataclass(frozen=True)
class RawRecord:
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[bytes, bytes | None]]
    problem: str | None = None  #: why the client cannot decode it (a header key, say)


@dataclass
class RawBatch:
    base_offset: int
    next_offset: int  #: one past the batch's last offset
    leader_epoch: int = -1
    control: bool = False
    problem: str | None = None  #: why the client cannot decode the batch as a whole
    records: list[RawRecord] = field(default_factory=list)

    @property
    def undecodable(self) -> bool:
        """True when kafka-python would fail on this batch."""
        return self.problem is not None or any(r.problem for r in self.records)


class _Malformed(Exception):
    pass


def read_batches(data: bytes, check_crcs: bool = True) -> Iterator[RawBatch]:
    """The batches of a fetch response's record bytes, in order; never raises.

    A batch cut short at the end of the data (the broker's size limit) ends the
    iteration, unless it is the first one: a first batch that is incomplete is corrupt.
    """
    pos, first = 0, True
    while pos + 12 <= len(data):
        base_offset, length = struct.unpack_from(">qi", data, pos)
        end = pos + 12 + length
        if pos + _HEADER.size > len(data) or length < _HEADER.size - 12:
            if first:
                yield RawBatch(base_offset, base_offset + 1,
                               problem=f"malformed batch header (length {length})")
            return
        (_, _, epoch, magic, crc, attributes, last_delta, base_ts, max_ts, _, _, _,
         count) = _HEADER.unpack_from(data, pos)
        batch = RawBatch(base_offset, base_offset + max(last_delta, 0) + 1, epoch,
                         control=bool(attributes & _CONTROL))
        if end > len(data):
            if first:
                batch.problem = f"batch of {length} bytes cut short at {len(data) - pos - 12}"
                yield batch
            return
        _read(batch, data[pos:end], magic, crc, attributes, base_ts, max_ts, count, check_crcs)
        yield batch
        pos, first = end, False


def _read(batch: RawBatch, raw: bytes, magic: int, crc: int, attributes: int, base_ts: int,
          max_ts: int, count: int, check_crcs: bool) -> None:
    if magic != 2:
        batch.problem = f"message format v{magic} is not supported"
        return
    if check_crcs and crc32c(raw[_CRC_FROM:]) != crc:
        batch.problem = "the batch fails its CRC-32C check (corrupt on disk or on the wire)"
    if batch.control:
        return  # a transaction marker: no records for the consumer
    body = raw[_HEADER.size:]
    compression = attributes & 0x07
    if compression:
        name, available, decode = _CODECS.get(compression, (f"#{compression}", lambda: False,
                                                            None))
        if decode is None or not available():
            batch.problem = batch.problem or (f"compression codec {name} is not installed"
                                              if compression in _CODECS
                                              else f"unknown compression codec {name}")
            return
        try:
            body = decode(body)
        except Exception as exc:  # noqa: BLE001 - every codec fails in its own way
            batch.problem = batch.problem or f"{name} data cannot be decompressed: {exc!r}"
            return
    ts_type = 1 if attributes & _LOG_APPEND_TIME else 0
    pos = 0
    try:
        for _ in range(count):
            record, pos = _record(body, pos, batch.base_offset, base_ts, max_ts, ts_type)
            batch.records.append(record)
        if pos != len(body):
            raise _Malformed(f"{len(body) - pos} unconsumed bytes after {count} records")
    except _Malformed as exc:
        batch.problem = batch.problem or f"malformed record: {exc}"


def _record(buf: bytes, pos: int, base_offset: int, base_ts: int, max_ts: int,
            ts_type: int) -> tuple[RawRecord, int]:
    length, pos = _varint(buf, pos)
    start = pos
    if length < 0 or start + length > len(buf):
        raise _Malformed(f"record length {length} beyond the batch")
    pos += 1  # attributes, unused
    ts_delta, pos = _varint(buf, pos)
    offset_delta, pos = _varint(buf, pos)
    key, pos = _bytes(buf, pos)
    value, pos = _bytes(buf, pos)
    header_count, pos = _varint(buf, pos)
    if header_count < 0:
        raise _Malformed(f"negative header count {header_count}")
    headers: list[tuple[bytes, bytes | None]] = []
    problem = None
    for _ in range(header_count):
        h_key, pos = _bytes(buf, pos)
        if h_key is None:
            raise _Malformed("a null header key")
        h_value, pos = _bytes(buf, pos)
        headers.append((h_key, h_value))
        try:
            h_key.decode("utf-8")
        except UnicodeDecodeError:
            problem = problem or f"header key {h_key!r} is not UTF-8"
    if pos - start != length:
        raise _Malformed(f"record of {length} bytes holds {pos - start}")
    timestamp = max_ts if ts_type == 1 else base_ts + ts_delta
    return RawRecord(base_offset + offset_delta, timestamp, ts_type, key, value, headers,
                     problem), pos


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint (at most 10 bytes)."""
    result = shift = 0
    for _ in range(10):
        if pos >= len(buf):
            raise _Malformed("a varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
    raise _Malformed("a varint longer than 10 bytes")


def _bytes(buf: bytes, pos: int) -> tuple[bytes | None, int]:
    size, pos = _varint(buf, pos)
    if size < 0:
        return None, pos
    if pos + size > len(buf):
        raise _Malformed(f"a field of {size} bytes runs past the end")
    return bytes(buf[pos:pos + size]), pos + size
