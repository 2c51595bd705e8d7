"""The control topic's consumer: what a record may say (unit), and on the real Kafka and
PostgreSQL that bad records go to the DLQ with their reason while the partition moves on,
and that the commands after them are applied and committed."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sqlalchemy import Engine, text

from bridge.control import Command, apply_cancel, parse
from pipeline.errors import CODES, InvalidMessage
from pipeline.scheduler.upkeep import owed_callbacks
from pipeline.state.admission import TASK_COLUMNS, admit
from tests.bridge.conftest import Case

BAD = [
    (b"not json", "message.invalid_json"),
    (b"[\"cancel\"]", "message.invalid_json"),
    (b"\xff\xfe", "message.invalid_json"),
    (json.dumps({"task_id": "a"}).encode(), "message.missing_field"),
    (json.dumps({"command": "pause", "task_id": "a"}).encode(), "message.unknown_command"),
    (json.dumps({"command": None, "task_id": "a"}).encode(), "message.missing_field"),
    (json.dumps({"command": "cancel"}).encode(), "message.missing_field"),
    (json.dumps({"command": "cancel", "task_ids": "a,b"}).encode(), "message.wrong_type"),
    (json.dumps({"command": "cancel", "task_id": "../etc"}).encode(), "task.invalid_id"),
    (json.dumps({"command": "cancel", "task_ids": ["ok", 7]}).encode(), "task.invalid_id"),
    (json.dumps({"command": "cancel", "task_id": "a", "reason": 5}).encode(),
     "message.wrong_type"),
    (json.dumps({"command": "cancel", "task_id": "a", "pad": "x" * 300}).encode(),
     "message.too_large"),
]


def record(value: bytes | None, offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic="ctl", partition=0, offset=offset, key=None, value=value,
                           headers=[])


@pytest.mark.parametrize("value,code", BAD)
def test_bad_records_are_refused_with_a_code(value: bytes, code: str) -> None:
    found = parse(record(value), max_bytes=256)
    assert isinstance(found, InvalidMessage) and found.code == code, found
    assert code in CODES


def test_good_records() -> None:
    assert parse(record(b'{"command": "cancel", "task_id": "a"}'), 1024) == Command(
        "cancel", ["a"], "cancelled by request")
    both = parse(record(json.dumps({"command": "cancel", "task_id": "a",
                                    "task_ids": ["b", "a"], "reason": "gone",
                                    "extra": 1}).encode()), 1024)
    assert both == Command("cancel", ["a", "b"], "gone")
    assert parse(record(b'\xef\xbb\xbf{"command": "cancel", "task_ids": ["x"], '
                        b'"reason": null}'), 1024) == Command("cancel", ["x"],
                                                             "cancelled by request")
    assert isinstance(parse(record(None), 1024), InvalidMessage)


@pytest.mark.integration
def test_bad_records_go_to_the_dlq_and_the_partition_moves_on(
        make_case: Callable[..., Case], unique: str) -> None:
    case = make_case(partitions=2)
    control = case.settings.topic_control  # the case's own, made and removed with it
    ids = [f"{case.prefix}-{i}" for i in range(3)]
    case.produce(case.jobs(ids))
    bridge = case.bridge("bridge")
    case.wait(lambda: case.count("queued") == 3, 60, "three jobs dispatched")

    producer = KafkaProducer(acks="all", **case.settings.kafka_client_config())
    for value, _ in BAD[:-1]:
        producer.send(control, key=b"k", value=value)
    producer.send(control, key=b"k", value=None)  # a tombstone: no value
    producer.send(control, key=ids[0].encode(), value=json.dumps(
        {"command": "cancel", "task_id": ids[0]}).encode())
    producer.send(control, key=ids[1].encode(), value=json.dumps(
        {"command": "cancel", "task_ids": [ids[1], ids[2]], "reason": "r"}).encode())
    producer.send(control, value=json.dumps(  # again: already final, no harm
        {"command": "cancel", "task_ids": ids}).encode())
    producer.flush()
    producer.close()

    case.wait(lambda: case.count("cancelled") == 3, 30, "the three cancels applied")
    rows = case.rows()
    assert {rows[t]["error_message"] for t in ids} == {"cancelled by request", "r"}
    letters = case.dead_letters(len(BAD))
    headers = [dict(r.headers) for r in letters]
    assert all(h["sonic-original-topic"] == control.encode() for h in headers)
    assert sorted(h["sonic-error-code"].decode() for h in headers) == sorted(
        [code for _, code in BAD[:-1]] + ["message.invalid_json"])
    assert all(h["sonic-error-message"] for h in headers)
    assert [r.value for r in letters[:len(BAD) - 1]] == [v for v, _ in BAD[:-1]]

    # Everything was committed: a restart reads nothing again.
    consumer = KafkaConsumer(group_id=f"{case.settings.consumer_group}-control",
                             enable_auto_commit=False,
                             **case.settings.kafka_client_config())
    tp = TopicPartition(control, 0)
    case.wait(lambda: consumer.committed(tp) == consumer.end_offsets([tp])[tp], 10,
              "the control offsets committed")
    consumer.close()
    assert bridge.poll() is None  # nothing crashed
    assert case.stop(bridge) == 0


@pytest.mark.integration
def test_a_job_cancelled_before_its_message_gets_its_callback(db_engine: Engine,
                                                               unique: str) -> None:
    """The tombstone takes the message's fields when it comes and owes the callback to the
    URL it names; without a URL nothing is owed; a job cancelled after admission (a real
    row) is left as it is by a redelivery of its message."""
    topic = f"test-tombstone-{unique}"
    ids = {name: f"{topic}.{name}" for name in ("hooked", "quiet", "admitted", "never")}

    def row(task_id: str, offset: int, callback_url: str | None) -> tuple[object, ...]:
        values = {"task_id": task_id, "kafka_topic": topic, "kafka_partition": 0,
                  "kafka_offset": offset, "tenant": "acme", "priority": 3, "depends_on": [],
                  "payload": json.dumps({"task_id": task_id, "metadata": {"n": offset}}),
                  "config": "{}", "callback_url": callback_url}
        return tuple(values.get(column) for column in TASK_COLUMNS)

    def admit_rows(rows: list[tuple[object, ...]]) -> list[str]:
        raw = db_engine.raw_connection()
        try:
            done = admit(raw.cursor(), rows)
            raw.commit()
            return done.duplicates
        finally:
            raw.close()

    try:
        assert admit_rows([row(ids["admitted"], 0, "https://hooks.example/a")]) == []
        out = apply_cancel(db_engine, topic, list(ids.values()), "early")
        assert out == {ids["hooked"]: "cancelled_before_admission",
                       ids["quiet"]: "cancelled_before_admission",
                       ids["admitted"]: "cancelled",
                       ids["never"]: "cancelled_before_admission"}
        with db_engine.begin() as conn:  # the upkeep settles the admitted one's callback
            conn.execute(text("UPDATE tasks SET callback_status = 'queued' "
                              "WHERE task_id = :t"), {"t": ids["admitted"]})
        assert sorted(admit_rows([row(ids["hooked"], 1, "https://hooks.example/h"),
                                  row(ids["quiet"], 2, None),
                                  row(ids["admitted"], 0, "https://hooks.example/a")])) == \
            sorted([ids["hooked"], ids["quiet"], ids["admitted"]])
        with db_engine.begin() as conn:
            rows = {r.task_id: r for r in conn.execute(text(
                "SELECT task_id, status, error_message, callback_url, callback_status, "
                "kafka_offset, tenant, priority, payload FROM tasks WHERE kafka_topic = :t"),
                {"t": topic})}
            owed = dict(owed_callbacks(conn, topic))
        hooked = rows[ids["hooked"]]
        assert (hooked.status, hooked.error_message, hooked.callback_url) == (
            "cancelled", "early", "https://hooks.example/h")
        assert (hooked.kafka_offset, hooked.tenant, hooked.priority) == (1, "acme", 3)
        assert hooked.payload["metadata"] == {"n": 1}
        assert (rows[ids["quiet"]].callback_url, rows[ids["quiet"]].callback_status) == (
            None, "none")
        assert rows[ids["admitted"]].callback_status == "queued"  # untouched
        assert (rows[ids["never"]].callback_status, rows[ids["never"]].payload) == (
            "none", {})
        assert owed == {ids["hooked"]: 3}
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})
