"""The bridge against the real Kafka, Postgres and Redis, run as ``python -m bridge``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from bridge import dlq
from bridge.main import EXIT_INVALID_RATIO, run
from pipeline.settings import STAGES
from tests.bridge.conftest import ROOT, Case, seed_message

pytestmark = pytest.mark.integration


def test_a_seed_message_is_admitted_queued_and_dispatched(make_case) -> None:
    case: Case = make_case()
    task_id = f"{case.prefix}-seed"
    message = seed_message(task_id, unknown_field={"kept": True})
    case.produce([(b"user1", json.dumps(message).encode())])

    bridge = case.bridge()
    case.wait(lambda: case.count("queued") == 1, 60, "the job to be queued")
    case.wait(lambda: case.lag() == 0, 30, "the offset to be committed")
    assert case.stop(bridge) == 0, case.log_of(bridge)

    row = case.rows()[task_id]
    assert row["payload"] == message  # every field kept, the unknown one too
    assert row["config"] == message["config"]
    assert (row["status"], row["stage"], row["priority"]) == ("queued", "preprocess", 5)
    assert row["queued_at"] is not None and row["callback_url"] == message["callback_url"]
    assert (row["kafka_key"], row["ordering_key"]) == ("user1", "user1")
    assert case.events("admitted") == {task_id: 1}

    (chain,) = case.chain_messages()
    assert chain["key"] == "preprocess:5"
    assert chain["headers"]["task"] == "sonic.preprocess"
    assert chain["headers"]["id"] == f"{task_id}:preprocess"
    args, _, embed = chain["decoded_body"]
    assert args == [task_id]
    assert [s["options"]["task_id"] for s in reversed(embed["chain"])] == [
        f"{task_id}:{stage}" for stage in STAGES[1:]]


def test_the_same_task_id_runs_once_even_when_redelivered(make_case) -> None:
    case: Case = make_case()
    task_id = f"{case.prefix}-dup"
    # Three sends (different keys: likely different partitions), one batch or several.
    case.produce([(key, json.dumps(seed_message(task_id)).encode())
                  for key in (b"k1", b"k2", b"k3")])
    bridge = case.bridge()
    case.wait(lambda: case.lag() == 0, 60, "all three to be committed")
    assert case.stop(bridge) == 0
    assert case.count() == 1 and case.chains() == {task_id: 1}
    assert case.events("duplicate") == {task_id: 2}

    # Kafka delivers the same messages again (the group's offsets reset to the start).
    case.reset_offsets()
    assert case.lag() == 3
    bridge = case.bridge()
    case.wait(lambda: case.lag() == 0, 60, "the redelivered messages to be committed")
    assert case.stop(bridge) == 0
    assert case.count() == 1 and case.chains() == {task_id: 1}
    assert case.events("duplicate") == {task_id: 5}
    assert case.events("admitted") == {task_id: 1}


def test_each_kind_of_invalid_message_goes_to_the_dlq(make_case) -> None:
    case: Case = make_case(partitions=1, max_message_bytes=4096)
    p = case.prefix
    good = [f"{p}-ok{i}" for i in range(4)]
    bad = {
        "message.invalid_json": b"{this is not json",
        "message.missing_field": json.dumps({"task_id": f"{p}-missing",
                                             "audio_url": "/uploads/a.mp3"}).encode(),
        "message.wrong_type": json.dumps(seed_message(f"{p}-wrong", duration="long")).encode(),
        "message.too_large": json.dumps(seed_message(f"{p}-large",
                                                     metadata={"blob": "x" * 5000})).encode(),
        "input.forbidden_url": json.dumps(seed_message(
            f"{p}-forbidden", audio_url="ftp://evil.example.com/a.mp3")).encode(),
    }
    messages = [case.jobs([good[0]])[0]]
    for i, value in enumerate(bad.values()):
        messages.append((f"bad{i}".encode(), value))
        if i in (1, 3):
            messages.append(case.jobs([good[1 + i // 2]])[0])
    messages.append(case.jobs([good[3]])[0])
    case.produce(messages, partition=0)

    bridge = case.bridge()
    case.wait(lambda: case.lag() == 0, 60, "the partition to move past every message")
    assert case.stop(bridge) == 0

    rows = case.rows()
    assert {t for t, r in rows.items() if r["status"] == "queued"} == set(good)
    rejected = {t: r for t, r in rows.items() if r["status"] == "rejected"}
    assert {r["error_code"] for r in rejected.values()} == set(bad) - {"message.invalid_json"}
    assert all(r["error_message"] and r["finished_at"] for r in rejected.values())
    assert sum(case.events("rejected").values()) == 4

    letters = case.dead_letters(len(bad))
    assert len(letters) == len(bad)
    by_code = {}
    for letter in letters:
        headers = dict(letter.headers)
        by_code[headers[dlq.H_CODE].decode()] = (letter, headers)
    assert set(by_code) == set(bad)
    for code, (letter, headers) in by_code.items():
        assert letter.value == bad[code]  # the original bytes, as they came
        assert headers[dlq.H_TOPIC].decode() == case.topic
        assert headers[dlq.H_PARTITION] == b"0"
        original = next(i for i, m in enumerate(messages) if m[1] == bad[code])
        assert int(headers[dlq.H_OFFSET]) == original
        assert letter.key == messages[original][0]
        assert headers[dlq.H_MESSAGE]
        if code != "message.invalid_json":
            assert headers[dlq.H_MESSAGE].decode() == rejected[
                headers[dlq.H_TASK].decode()]["error_message"]


def test_a_mostly_invalid_topic_stops_the_bridge_loudly(make_case) -> None:
    case: Case = make_case(partitions=1)
    case.produce([(None, b"garbage %d" % i) for i in range(50)])
    code = run(case.settings.model_copy(update={"invalid_ratio_max": 0.5, "invalid_window": 20}))
    assert code == EXIT_INVALID_RATIO == 5
    assert case.lag() == 50  # nothing drained: the topic waits for a fixed producer
    assert case.dead_letters(1, timeout_s=3) == []


def test_sigterm_commits_everything_admitted_and_exits_0(make_case) -> None:
    case: Case = make_case(partitions=4)
    ids = [f"{case.prefix}-{i:05d}" for i in range(3000)]
    case.produce(case.jobs(ids))
    bridge = case.bridge()
    case.wait(lambda: case.count() > 0, 60, "admission to start", interval_s=0.02)
    assert case.stop(bridge, signal.SIGTERM) == 0, case.log_of(bridge)

    committed, _ = case.offsets()
    admitted: dict[int, int] = {}
    for row in case.rows().values():
        admitted[row["kafka_partition"]] = admitted.get(row["kafka_partition"], 0) + 1
    # Every admitted job is covered by the commit, and nothing more (offsets 0..n-1).
    assert committed == {p: admitted.get(p, 0) for p in committed}
    # What the dispatcher sent is marked queued, once each; the rest waits, durable, in
    # the backlog for the next bridge's dispatcher.
    assert case.count("queued") + case.count("received") == case.count()
    assert case.chains() == {t: 1 for t, r in case.rows().items() if r["status"] == "queued"}


@pytest.mark.parametrize(("env", "service"), [
    ({"SONIC_PG_PORT": "1"}, "postgres"),
    ({"SONIC_REDIS_PORT": "1"}, "redis"),
    ({"SONIC_KAFKA_BOOTSTRAP": "127.0.0.1:1"}, "kafka"),
])
def test_an_unreachable_service_at_start_exits_4_with_one_line(make_case, env, service) -> None:
    case: Case = make_case(partitions=1)
    done = subprocess.run([sys.executable, "-m", "bridge"], cwd=ROOT, env=dict(case.env, **env),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 4, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"bridge: service.unavailable: {service}: cannot connect")
    assert "make up" in lines[0]


def test_a_config_error_exits_3(make_case) -> None:
    case: Case = make_case(partitions=1)
    env = dict(case.env, SONIC_BACKLOG_MAX="10", SONIC_BACKLOG_LOW="20")
    done = subprocess.run([sys.executable, "-m", "bridge"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3
    assert "config.invalid" in done.stderr
