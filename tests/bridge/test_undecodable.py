"""Records the Kafka client cannot decode, and field faults, against the real stack: the
bridge keeps running, each bad record is dead-lettered with its code and coordinates, the
next job on the same partition is admitted and the committed offset moves past it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kafka import KafkaProducer

from bridge import dlq
from tests.bridge.conftest import Case, seed_message
from tests.bridge.undecodable_records import (BAD_KEY, bad_first_record_length, kcat_produce,
                                              kcat_tombstone, patch_batch, replace, segment,
                                              set_codec)

pytestmark = pytest.mark.integration


def job(task_id: str, **extra: Any) -> bytes:
    return json.dumps(seed_message(task_id, **extra)).encode()


def produce_batch(case: Case, values: list[bytes], partition: int = 0,
                  headers: dict[int, list[tuple[str, bytes]]] | None = None,
                  compression: str | None = None) -> None:
    """``values`` as one batch (one producer, one flush)."""
    producer = KafkaProducer(linger_ms=50, acks="all", compression_type=compression,
                             **case.settings.kafka_client_config())
    for i, value in enumerate(values):
        producer.send(case.topic, value=value, partition=partition,
                      headers=(headers or {}).get(i, []))
    producer.flush()
    producer.close()


def run_until_drained(case: Case) -> None:
    bridge = case.bridge()
    case.wait(lambda: case.lag() == 0, 90, "every partition's offset to move past the end")
    case.wait(lambda: case.count("received") == 0, 30, "admitted jobs to be dispatched")
    assert bridge.poll() is None, case.log_of(bridge)  # still running
    committed, ends = case.offsets()
    assert committed == ends
    assert case.stop(bridge) == 0, case.log_of(bridge)


def letters_by_offset(case: Case, count: int) -> dict[tuple[int, int], Any]:
    letters = case.dead_letters(count)
    assert len(letters) == count
    out = {}
    for letter in letters:
        headers = dict(letter.headers)
        assert headers[dlq.H_TOPIC].decode() == case.topic
        out[(int(headers[dlq.H_PARTITION]), int(headers[dlq.H_OFFSET]))] = (letter, headers)
    return out


def test_header_keys_that_are_not_utf8_are_dead_lettered_and_the_partition_moves_on(
        make_case) -> None:
    case: Case = make_case(partitions=2)
    p = case.prefix
    bad_keys = [BAD_KEY, b"\xc3\x28", b"\xed\xa0\x80", b"\x80", b"ok\xfe\xfftail"]
    expected = {}  # offset on partition 0 -> (bad task id, header key)
    for i, header_key in enumerate(bad_keys):
        case.produce([(None, job(f"{p}-ok{i}"))], partition=0)
        kcat_produce(case.settings, case.topic, 0, job(f"{p}-bad{i}"), key=b"user1",
                     header_key=header_key)
        expected[2 * i + 1] = (f"{p}-bad{i}", header_key)
    # header values are bytes: any value, UTF-8 or not, is fine for the client
    kcat_produce(case.settings, case.topic, 0, job(f"{p}-value"), header_key=b"trace",
                 header_value=b"\xff\xfe\x01binary")
    case.produce([(None, job(f"{p}-last"))], partition=0)
    case.produce([(None, job(f"{p}-other"))], partition=1)

    run_until_drained(case)

    rows = case.rows()
    good = {f"{p}-ok{i}" for i in range(len(bad_keys))} | {f"{p}-value", f"{p}-last",
                                                            f"{p}-other"}
    assert {t for t, r in rows.items() if r["status"] == "queued"} == good
    for offset, (task_id, header_key) in expected.items():
        row = rows[task_id]  # the value was readable: a rejected row names it
        assert (row["status"], row["error_code"]) == ("rejected", "message.undecodable")
        assert row["kafka_offset"] == offset and "UTF-8" in row["error_message"]
    letters = letters_by_offset(case, len(bad_keys))
    assert set(letters) == {(0, offset) for offset in expected}
    for (_, offset), (letter, headers) in letters.items():
        task_id, header_key = expected[offset]
        assert headers[dlq.H_CODE] == b"message.undecodable"
        assert headers[dlq.H_TASK].decode() == task_id
        assert letter.value == job(task_id) and letter.key == b"user1"  # the bytes, recovered
        escaped = header_key.decode("utf-8", "backslashreplace")
        assert (escaped, b"v") in letter.headers
        assert f"@{offset}" in headers[dlq.H_MESSAGE].decode()


def test_every_kind_of_undecodable_batch_is_dead_lettered_and_the_rest_admitted(
        make_case) -> None:
    case: Case = make_case(partitions=1)
    p = case.prefix
    log = segment(case.settings, case.topic, 0)
    # offsets 0-2, one batch: the middle record's header key becomes b"k\xff" (CRC fixed)
    produce_batch(case, [job(f"{p}-a0"), job(f"{p}-a1"), job(f"{p}-a2")],
                  headers={1: [("kZ", b"v")]})
    # 3: a flipped value byte, CRC not fixed
    produce_batch(case, [job(f"{p}-b0", marker="crc-flip")])
    # 4: an unknown compression codec (CRC fixed)
    produce_batch(case, [job(f"{p}-c0", marker="codec-7")])
    # 5: a record whose length is wrong (CRC fixed)
    produce_batch(case, [job(f"{p}-d0", marker="bad-length")])
    # 6-7: gzip data that no longer decompresses (CRC fixed)
    produce_batch(case, [job(f"{p}-e0"), job(f"{p}-e1")], compression="gzip")
    produce_batch(case, [job(f"{p}-z0")])  # 8: the next good job
    patch_batch(log, f"{p}-a1".encode(), replace(b"kZ", BAD_KEY), fix_crc=True)
    patch_batch(log, b"crc-flip", replace(b"crc-flip", b"crc-flop"), fix_crc=False)
    patch_batch(log, b"codec-7", set_codec(7), fix_crc=True)
    patch_batch(log, b"bad-length", bad_first_record_length, fix_crc=True)
    gzip_marker = _compressed_marker(log)
    patch_batch(log, gzip_marker, replace(gzip_marker, bytes(len(gzip_marker))), fix_crc=True)

    run_until_drained(case)

    rows = case.rows()
    assert {t for t, r in rows.items() if r["status"] == "queued"} == {
        f"{p}-a0", f"{p}-a2", f"{p}-z0"}  # the good records of a broken batch are admitted
    rejected = {t: r for t, r in rows.items() if r["status"] == "rejected"}
    assert set(rejected) == {f"{p}-a1"}  # only an intact value names its task
    letters = letters_by_offset(case, 6)
    assert set(letters) == {(0, o) for o in (1, 3, 4, 5, 6, 7)}
    assert {h[dlq.H_CODE] for _, h in letters.values()} == {b"message.undecodable"}
    reasons = {o: h[dlq.H_MESSAGE].decode() for (_, o), (_, h) in letters.items()}
    assert "UTF-8" in reasons[1] and "CRC" in reasons[3] and "codec" in reasons[4]
    assert "malformed" in reasons[5] and "gzip" in reasons[6] and "gzip" in reasons[7]
    assert letters[(0, 1)][0].value == job(f"{p}-a1")
    assert letters[(0, 3)][0].value == job(f"{p}-b0", marker="crc-flop")  # what was read
    assert dlq.H_TASK not in letters[(0, 3)][1]  # a corrupt value names no task
    letter, headers = letters[(0, 4)]  # nothing could be taken apart
    assert letter.value == b"" and headers[dlq.H_DROPPED] == b"absent"


def _compressed_marker(log) -> bytes:  # type: ignore[no-untyped-def]
    """Eight bytes from the middle of the last gzip batch's compressed data."""
    data = log.read_bytes()
    pos, found = 0, None
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos + 8:pos + 12], "big", signed=True)
        if int.from_bytes(data[pos + 21:pos + 23], "big") & 0x07 == 1:
            found = data[pos:pos + 12 + length]
        pos += 12 + length
    assert found is not None
    middle = 61 + (len(found) - 61) // 2
    return found[middle:middle + 8]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_is_admitted(make_case, codec: str) -> None:
    case: Case = make_case(partitions=1)
    ids = [f"{case.prefix}-{codec}{i}" for i in range(3)]
    for task_id in ids:  # kcat (librdkafka) compresses each with the codec
        kcat_produce(case.settings, case.topic, 0, job(task_id), header_key=b"trace",
                     codec=codec)
    run_until_drained(case)
    assert {t for t, r in case.rows().items() if r["status"] == "queued"} == set(ids)
    assert case.dead_letters(1, timeout_s=3) == []


def test_field_faults_on_kafka_get_their_code_and_the_partition_moves_on(make_case) -> None:
    case: Case = make_case(partitions=1)
    p = case.prefix
    nulls = seed_message(f"{p}-nulls", priority=None, metadata=None, depends_on=None,
                         output=None, tenant=None, ttl_s=None)
    nulls["config"] = {"expand_ratio": None, "min_resolution": None, "seed": None,
                       "inference_steps": 30}
    sent = [
        (f"{p}-ok0", job(f"{p}-ok0"), "queued", None),
        (f"{p}-huge", job(f"{p}-huge", config={"min_resolution": 100000}), "rejected",
         "message.out_of_range"),
        (f"{p}-steps", job(f"{p}-steps").replace(b'"inference_steps": 25',
                                                 b'"inference_steps": 1e9'),
         "rejected", "message.wrong_type"),
        (f"{p}-bool", job(f"{p}-bool", priority=True), "rejected", "message.wrong_type"),
        (f"{p}-fps", job(f"{p}-fps", output={"fps": 1000}), "rejected", "message.out_of_range"),
        (f"{p}-ttl", job(f"{p}-ttl", ttl_s=10**9), "rejected", "message.out_of_range"),
        (f"{p}-nulls", json.dumps(nulls).encode(), "queued", None),
        ("../../x", job("../../x"), None, "message.wrong_type"),
        ("/tmp/x", job("/tmp/x"), None, "message.wrong_type"),
        (f"{p}-bom", b"\xef\xbb\xbf" + job(f"{p}-bom"), "queued", None),
        (f"{p}-tail", job(f"{p}-tail") + b"}", "rejected", "message.invalid_json"),
        (f"{p}-cut", job(f"{p}-cut")[:80], "rejected", "message.invalid_json"),
        ("", None, None, "message.invalid_json"),  # a bare tombstone: no key, no value
        (f"{p}-ok1", job(f"{p}-ok1"), "queued", None),
    ]
    tombstone = next(i for i, entry in enumerate(sent) if entry[1] is None)
    case.produce([(None, value) for _, value, _, _ in sent[:tombstone]], partition=0)
    kcat_tombstone(case.settings, case.topic, 0)
    case.produce([(None, value) for _, value, _, _ in sent[tombstone + 1:]], partition=0)

    run_until_drained(case)

    rows = case.rows()
    for task_id, _, status, code in sent:
        if status is None:
            assert task_id not in rows
            continue
        assert (rows[task_id]["status"], rows[task_id]["error_code"]) == (status, code), task_id
    stored = rows[f"{p}-nulls"]
    assert stored["config"] == {"inference_steps": 30} and stored["priority"] == 5
    assert all(v is not None for v in stored["payload"].values())
    assert rows[f"{p}-bom"]["payload"]["task_id"] == f"{p}-bom"
    assert "2048" in rows[f"{p}-huge"]["error_message"]
    letters = letters_by_offset(case, sum(1 for s in sent if s[3]))
    for offset, (task_id, value, _, code) in enumerate(sent):
        if code is not None:
            letter, headers = letters[(0, offset)]
            assert headers[dlq.H_CODE].decode() == code
            if value is None:  # Kafka clients refuse to produce no key and no value
                assert letter.value == b"" and headers[dlq.H_DROPPED] == b"absent"
            else:
                assert letter.value == value
