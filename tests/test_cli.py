"""The CLI's contract: verbs, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kafka import KafkaConsumer

from pipeline.settings import Settings

pytestmark = pytest.mark.integration


def cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, **env))


def test_wrong_postgres_password_is_one_line_exit_3(stack: Settings) -> None:
    proc = cli("db", "current", SONIC_PG_PASSWORD="not-the-password")
    assert proc.returncode == 3
    line, = proc.stderr.strip().splitlines()
    assert "password authentication failed" in line and "SONIC_PG_PASSWORD" in line
    assert "not-the-password" not in proc.stderr


def test_postgres_not_listening_is_one_line_exit_4(stack: Settings) -> None:
    proc = cli("db", "upgrade", SONIC_PG_PORT="1")
    assert proc.returncode == 4
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("sonic-pipeline: service.unavailable: postgres: cannot connect")


def test_show_unknown_task_is_exit_1_with_its_code(stack: Settings) -> None:
    proc = cli("show", "no-such-task")
    assert proc.returncode == 1
    assert "task.not_found" in proc.stderr


def test_submit_publishes_the_seed_shape(stack: Settings, unique: str) -> None:
    topic = f"test-submit-{unique}"
    proc = cli("submit", "--image", "/uploads/a.jpg", "--audio", "/uploads/a.wav",
               "--callback-url", "https://api.example.com/cb", "--task-id", f"t-{unique}",
               SONIC_TOPIC_TASKS=topic)
    assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000,
                             **stack.kafka_client_config())
    records = []
    for record in consumer:  # the first record is ours: stop there, not at the timeout
        records.append(record)
        break
    consumer.close()
    assert len(records) == 1 and records[0].offset == sent["offset"]
    message = json.loads(records[0].value)
    assert (message["task_id"], message["image_url"], message["audio_url"],
            message["callback_url"]) == (f"t-{unique}", "/uploads/a.jpg", "/uploads/a.wav",
                                         "https://api.example.com/cb")
    assert records[0].key == f"t-{unique}".encode()


def test_cancel_answers_per_id_and_leaves_final_jobs_alone(db_engine, unique: str) -> None:
    from sqlalchemy import text

    ids = {name: f"cli-cancel-{name}-{unique}" for name in ("waiting", "done")}
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, kafka_topic, status) VALUES "
                          "(:a, :topic, 'received'), (:b, :topic, 'completed')"),
                     {"a": ids["waiting"], "b": ids["done"], "topic": f"cli-{unique}"})
    try:
        proc = cli("cancel", ids["waiting"], ids["done"])
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {ids["waiting"]: "cancelled",
                                           ids["done"]: "already final: completed"}
        with db_engine.connect() as conn:
            rows = dict(conn.execute(text(
                "SELECT task_id, status FROM tasks WHERE kafka_topic = :t"),
                {"t": f"cli-{unique}"}).all())
        assert rows == {ids["waiting"]: "cancelled", ids["done"]: "completed"}
        ahead = cli("cancel", f"cli-cancel-nope-{unique}", SONIC_TOPIC_TASKS=f"cli-{unique}")
        assert ahead.returncode == 0, ahead.stderr  # cancelled before its message comes
        assert json.loads(ahead.stdout) == {f"cli-cancel-nope-{unique}":
                                            "cancelled_before_admission"}
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": f"cli-{unique}"})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": f"cli-{unique}"})
