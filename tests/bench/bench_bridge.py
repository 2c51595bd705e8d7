"""Admission throughput: Kafka -> durable row in the Postgres backlog.

Ours: ``python -m bridge`` as a real process, its dispatcher on (a window of a few jobs),
so the backlog grows as it would in front of a busy gpu pool. The baseline: the seed
article's loop (auto-commit consumer; per message one INSERT + commit and one
``chain.apply_async()``). Each runs on its own fresh topic and Redis database; the rate
is measured from the first row's ``received_at`` to the last one's (Postgres clocks), so
process start-up and the group join are not counted for either.

    .venv/bin/python tests/bench/bench_bridge.py [--jobs 20000] [--naive-jobs 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import psycopg2  # noqa: E402
import redis  # noqa: E402
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.admin import NewTopic  # noqa: E402
from sqlalchemy import text  # noqa: E402

from pipeline import chains  # noqa: E402
from pipeline.settings import Settings, load  # noqa: E402
from pipeline.state.db import make_db_engine  # noqa: E402

#: A Redis database for the benchmark only (flushed before and after).
BENCH_REDIS_DB = 14
PARTITIONS = 16


def message(task_id: str, i: int) -> bytes:
    """The seed article's shape, with per-job media paths as in real traffic."""
    return json.dumps({
        "task_id": task_id, "audio_url": f"/uploads/user{i % 100}/{task_id}.mp3",
        "image_url": f"/uploads/user{i % 100}/{task_id}.jpg", "duration": 30.5,
        "config": {"min_resolution": 1024, "expand_ratio": 0.18, "inference_steps": 25,
                   "dynamic_scale": 1.1, "motion_scale": 1.05},
        "callback_url": "https://api.example.com/callback",
    }).encode()


def produce(settings: Settings, topic: str, prefix: str, n: int) -> None:
    admin = KafkaAdminClient(**settings.kafka_client_config())
    admin.create_topics([NewTopic(topic, PARTITIONS, 1), NewTopic(f"{topic}-dlq", 1, 1)])
    admin.close()
    producer = KafkaProducer(linger_ms=50, batch_size=512 * 1024, acks="all",
                             **settings.kafka_client_config())
    for i in range(n):
        task_id = f"{prefix}-{i:07d}"
        producer.send(topic, key=task_id.encode(), value=message(task_id, i))
    producer.flush()
    producer.close()


def rate(settings: Settings, topic: str) -> tuple[int, float]:
    db_engine = make_db_engine(settings, pool_size=1)
    with db_engine.connect() as conn:
        n, seconds = conn.execute(text(
            "SELECT count(*), extract(epoch FROM max(received_at) - min(received_at)) "
            "FROM tasks WHERE kafka_topic = :t"), {"t": topic}).one()
    db_engine.dispose()
    return int(n), float(seconds or 0.0)


def admitted(settings: Settings, topic: str) -> int:
    return rate(settings, topic)[0]


def run_ours(settings: Settings, n: int, profile: bool) -> tuple[int, float]:
    topic = f"bench-ours-{uuid.uuid4().hex[:8]}"
    produce(settings, topic, topic, n)
    env = dict(os.environ, SONIC_TOPIC_TASKS=topic, SONIC_TOPIC_DLQ=f"{topic}-dlq",
               SONIC_CONSUMER_GROUP=f"{topic}-g", SONIC_REDIS_DB=str(BENCH_REDIS_DB),
               SONIC_BACKLOG_MAX=str(10 * n), SONIC_BACKLOG_LOW=str(10 * n - 1),
               SONIC_METRICS_PORT="0")
    argv = [sys.executable, "-m", "bridge"]
    log = open("/tmp/bench_bridge.log", "wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    spy = None
    if profile:  # py-spy (pip install py-spy) samples every thread of the bridge
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--threads",
                                "--idle", "--format", "raw", "-o", "/tmp/bench_bridge.spy",
                                "--duration", "15"])
    try:
        deadline = time.monotonic() + 300
        while admitted(settings, topic) < n and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        if spy is not None:
            spy.wait(timeout=60)
    result = rate(settings, topic)
    cleanup(settings, topic)
    return result


def run_naive(settings: Settings, n: int) -> tuple[int, float]:
    """The seed article's loop, as it is (plus the group id and earliest, to finish)."""
    topic = f"bench-naive-{uuid.uuid4().hex[:8]}"
    produce(settings, topic, topic, n)
    app = chains.make_app(settings)
    conn = psycopg2.connect(host=settings.pg_host, port=settings.pg_port, user=settings.pg_user,
                            password=settings.pg_password.get_secret_value(),
                            dbname=settings.pg_database)
    consumer = KafkaConsumer(topic, group_id=f"{topic}-g", enable_auto_commit=True,
                             auto_offset_reset="earliest", consumer_timeout_ms=30000,
                             **settings.kafka_client_config())
    done = 0
    for record in consumer:
        job = json.loads(record.value)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO tasks (task_id, kafka_topic, payload, status, queued_at) "
                        "VALUES (%s, %s, %s, 'queued', now())",
                        (job["task_id"], topic, json.dumps(job)))
        conn.commit()
        chains.build_chain(app, job["task_id"], 5).apply_async()
        done += 1
        if done == n:
            break
    consumer.close()
    conn.close()
    result = rate(settings, topic)
    cleanup(settings, topic)
    return result


def cleanup(settings: Settings, topic: str) -> None:
    db_engine = make_db_engine(settings, pool_size=1)
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})
    db_engine.dispose()
    admin = KafkaAdminClient(**settings.kafka_client_config())
    admin.delete_topics([topic, f"{topic}-dlq"])
    admin.close()
    redis.Redis(host=settings.redis_host, port=settings.redis_port, db=BENCH_REDIS_DB,
                password=settings.redis_password.get_secret_value()
                if settings.redis_password else None).flushdb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--naive-jobs", type=int, default=3_000)
    parser.add_argument("--profile", action="store_true",
                        help="run the bridge under py-spy (/tmp/bench_bridge.spy)")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    settings = load(redis_db=BENCH_REDIS_DB)
    n, seconds = run_ours(settings, args.jobs, args.profile)
    ours = n / seconds if seconds else float("nan")
    print(f"cores: {os.cpu_count()}")
    print(f"bridge: {n} jobs admitted in {seconds:.2f} s = {ours:,.0f} jobs/s")
    if args.skip_naive:
        return 0
    n2, seconds2 = run_naive(settings, args.naive_jobs)
    naive = n2 / seconds2 if seconds2 else float("nan")
    print(f"naive: {n2} jobs in {seconds2:.2f} s = {naive:,.0f} jobs/s")
    print(f"ratio: {ours / naive:.1f}x (goal: >= 50x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
