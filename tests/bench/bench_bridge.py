"""Admission throughput: Kafka -> durable row in the Postgres backlog, against the seed loop.

Both read the same Kafka data: one topic is produced once (the seed article's message
shape), and each run consumes it from the start with a group of its own; the rows are
deleted between runs. The runs alternate (naive, ours, ours, naive, ...) and each figure
is the median of ``--reps`` runs, so neither side gets the warmer machine.

Ours: ``python -m bridge`` as a real process, its dispatcher on (a window of a few jobs),
so the backlog grows as it would in front of a busy gpu pool. The baseline: the seed
article's consumer loop as it is (auto-commit; per message: ``json.loads``, one INSERT,
one commit), plus a group id and ``earliest`` so that it reads the topic. The same loop
that also publishes each job's chain to Celery (``naive+publish``, the baseline of the
earlier version of this benchmark) is measured too, and its ratio printed beside.

The rate counts, for both, the rows durably committed between the first admission
transaction's start and the last one's (``received_at`` is the transaction's start):
rows before the last transaction, over that span. Process start-up and the group join
are not counted for either. The bridge logs where its time went (per job: poll,
decode/validate, copy+insert, settle, Postgres commit, Kafka commit); the median run's
line is printed.

    .venv/bin/python tests/bench/bench_bridge.py [--jobs 40000] [--naive-jobs 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
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

from pipeline import chains  # noqa: E402
from pipeline.settings import Settings, load  # noqa: E402

#: A Redis database for the benchmark only (flushed before and after).
BENCH_REDIS_DB = 14
PARTITIONS = 16
LOG = Path("/tmp/bench_bridge.log")


def message(task_id: str, i: int) -> bytes:
    """The seed article's shape, with per-job media paths as in real traffic."""
    return json.dumps({
        "task_id": task_id, "audio_url": f"/uploads/user{i % 100}/{task_id}.mp3",
        "image_url": f"/uploads/user{i % 100}/{task_id}.jpg", "duration": 30.5,
        "config": {"min_resolution": 1024, "expand_ratio": 0.18, "inference_steps": 25,
                   "dynamic_scale": 1.1, "motion_scale": 1.05},
        "callback_url": "https://api.example.com/callback",
    }).encode()


def task_ids(topic: str, n: int) -> list[str]:
    """The ids of the topic's first ``n`` jobs. The benchmark's queries look rows up by
    these (primary key): ``tasks`` has no index on ``kafka_topic`` alone, and a scan of a
    table that other work has grown took minutes here (and loaded the machine while the
    bridge ran)."""
    return [f"{topic}-{i:07d}" for i in range(n)]


def produce(settings: Settings, topic: str, n: int) -> None:
    admin = KafkaAdminClient(**settings.kafka_client_config())
    admin.create_topics([NewTopic(topic, PARTITIONS, 1), NewTopic(f"{topic}-dlq", 1, 1)])
    admin.close()
    producer = KafkaProducer(linger_ms=50, batch_size=512 * 1024, acks="all",
                             **settings.kafka_client_config())
    for i, task_id in enumerate(task_ids(topic, n)):
        producer.send(topic, key=task_id.encode(), value=message(task_id, i))
    producer.flush()
    producer.close()


def connect(settings: Settings):  # type: ignore[no-untyped-def]
    return psycopg2.connect(host=settings.pg_host, port=settings.pg_port,
                            user=settings.pg_user,
                            password=settings.pg_password.get_secret_value(),
                            dbname=settings.pg_database)


def count(settings: Settings, ids: list[str]) -> int:
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tasks WHERE task_id = ANY(%s)", (ids,))
        n = cur.fetchone()[0]
    conn.close()
    return int(n)


def rate(settings: Settings, ids: list[str]) -> tuple[int, float]:
    """(rows durable before the last transaction, seconds from the first to the last)."""
    with connect(settings) as conn, conn.cursor() as cur:
        cur.execute("""
            WITH rows AS (SELECT received_at FROM tasks WHERE task_id = ANY(%(ids)s)),
                 span AS (SELECT min(received_at) AS first, max(received_at) AS last FROM rows)
            SELECT count(*) FILTER (WHERE received_at < span.last),
                   extract(epoch FROM span.last - span.first)
            FROM rows, span GROUP BY span.last, span.first""", {"ids": ids})
        n, seconds = cur.fetchone() or (0, 0.0)
    conn.close()
    return int(n), float(seconds or 0.0)


def run_ours(settings: Settings, topic: str, n: int, profile: bool,
             root: Path = ROOT, extra_env: dict[str, str] | None = None) -> tuple[float, str]:
    """jobs/s of ``python -m bridge`` (from the tree at ``root``, with ``extra_env``) over
    the topic's first ``n`` jobs; its phases line."""
    group = f"{topic}-ours-{uuid.uuid4().hex[:6]}"
    env = dict(os.environ, **(extra_env or {}), SONIC_TOPIC_TASKS=topic, SONIC_TOPIC_DLQ=f"{topic}-dlq",
               SONIC_CONSUMER_GROUP=group, SONIC_REDIS_DB=str(BENCH_REDIS_DB),
               SONIC_BACKLOG_MAX=str(10 * n), SONIC_BACKLOG_LOW=str(10 * n - 1),
               SONIC_METRICS_PORT="0")
    with open(LOG, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        spy = None
        if profile:  # py-spy (pip install py-spy) samples every thread of the bridge
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--threads",
                                    "--format", "raw", "-o", "/tmp/bench_bridge.spy",
                                    "--duration", "20"])
        ids = task_ids(topic, n)
        try:
            deadline = time.monotonic() + 300
            while count(settings, ids) < n and time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise SystemExit(f"the bridge exited with {proc.returncode}; see {LOG}")
                time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            if spy is not None:
                spy.wait(timeout=60)
    found = re.findall(r"phases .*", LOG.read_text(errors="replace"))
    done, seconds = rate(settings, ids)
    return (done / seconds if seconds else float("nan")), (found[-1] if found else "")


def run_naive(settings: Settings, topic: str, n: int, publish: bool = False) -> float:
    """The seed article's loop, as it is (plus the group id and earliest, to read the topic);
    with ``publish``, each job is also sent to Celery as its chain (the naive design has no
    dispatcher: this is how its jobs would reach the workers)."""
    app = chains.make_app(settings) if publish else None
    conn = connect(settings)
    consumer = KafkaConsumer(topic, group_id=f"{topic}-naive-{uuid.uuid4().hex[:6]}",
                             enable_auto_commit=True, auto_offset_reset="earliest",
                             consumer_timeout_ms=30000, **settings.kafka_client_config())
    done = 0
    for record in consumer:
        job = json.loads(record.value)
        with conn.cursor() as cur:
            cur.execute("INSERT INTO tasks (task_id, kafka_topic, payload, status, queued_at) "
                        "VALUES (%s, %s, %s, 'queued', now())",
                        (job["task_id"], topic, json.dumps(job)))
        conn.commit()
        if app is not None:
            chains.build_chain(app, job["task_id"], 5).apply_async()
        done += 1
        if done == n:
            break
    consumer.close()
    conn.close()
    rows, seconds = rate(settings, task_ids(topic, n))
    return rows / seconds if seconds else float("nan")


def delete_rows(settings: Settings, topic: str, n: int) -> None:
    """The topic's rows (its first ``n`` jobs), a few thousand jobs per transaction."""
    conn = connect(settings)
    ids = task_ids(topic, n)
    with conn.cursor() as cur:
        for start in range(0, n, 5000):
            chunk = ids[start:start + 5000]
            cur.execute("DELETE FROM tasks WHERE task_id = ANY(%s)", (chunk,))
            cur.execute("DELETE FROM status_outbox WHERE task_id = ANY(%s)", (chunk,))
            conn.commit()
        cur.execute("DELETE FROM tenants WHERE topic = %s", (topic,))
    conn.commit()
    conn.close()
    redis.Redis(host=settings.redis_host, port=settings.redis_port, db=BENCH_REDIS_DB,
                password=settings.redis_password.get_secret_value()
                if settings.redis_password else None).flushdb()


def delete_topic(settings: Settings, topic: str) -> None:
    admin = KafkaAdminClient(**settings.kafka_client_config())
    admin.delete_topics([topic, f"{topic}-dlq"])
    admin.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--naive-jobs", type=int, default=2_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="run the bridge under py-spy (/tmp/bench_bridge.spy)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--other-root", type=Path,
                        help="also measure the bridge of this source tree (say, an older "
                             "commit's `git archive`), in the same runs")
    parser.add_argument("--other-env", action="append", default=[], metavar="NAME=VALUE",
                        help="settings of the other bridge (this tree's unless --other-root "
                             "is given), say SONIC_BRIDGE_BATCH_MAX=5000; repeatable")
    args = parser.parse_args()
    other_env = dict(item.split("=", 1) for item in args.other_env)
    if other_env and args.other_root is None:
        args.other_root = ROOT
    settings = load(redis_db=BENCH_REDIS_DB)
    topic = f"bench-admit-{uuid.uuid4().hex[:8]}"
    total = max(args.jobs, args.naive_jobs)
    produce(settings, topic, total)
    ours: list[tuple[float, str]] = []
    naive: list[float] = []
    published: list[float] = []
    other: list[tuple[float, str]] = []
    try:
        for rep in range(args.reps):
            order = ("naive", "ours", "other", "publish")
            for which in order if rep % 2 == 0 else reversed(order):
                started = time.monotonic()
                if which == "ours":
                    ours.append(run_ours(settings, topic, args.jobs, args.profile and rep == 0))
                    figure = ours[-1][0]
                elif which == "other":
                    if args.other_root is None:
                        continue
                    other.append(run_ours(settings, topic, args.jobs, False, args.other_root,
                                          other_env))
                    figure = other[-1][0]
                elif args.skip_naive:
                    continue
                elif which == "naive":
                    naive.append(figure := run_naive(settings, topic, args.naive_jobs))
                else:
                    published.append(figure := run_naive(settings, topic, args.naive_jobs,
                                                         publish=True))
                delete_rows(settings, topic, total)
                print(f"  run {rep + 1}: {which} {figure:,.0f} jobs/s "
                      f"({time.monotonic() - started:.0f} s with its clean-up)", flush=True)
    finally:
        delete_rows(settings, topic, total)
        delete_topic(settings, topic)
    rates = sorted(ours)
    median = rates[len(rates) // 2]
    print(f"cores: {os.cpu_count()}")
    print(f"bridge: {args.jobs} jobs x {args.reps} runs, median "
          f"= {statistics.median(r for r, _ in ours):,.0f} jobs/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r, _ in ours)})")
    print(f"bridge {median[1] or 'phases: (none logged)'}")
    if other:
        print(f"other bridge ({args.other_root} {' '.join(args.other_env)}): median "
              f"{statistics.median(r for r, _ in other):,.0f} jobs/s "
              f"(runs: {', '.join(f'{r:,.0f}' for r, _ in other)})")
        print(f"other bridge {sorted(other)[len(other) // 2][1] or 'phases: (none logged)'}")
    if not naive:
        return 0
    print(f"naive: {args.naive_jobs} jobs x {args.reps} runs, median "
          f"= {statistics.median(naive):,.0f} jobs/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in naive)})")
    print(f"naive+publish: {args.naive_jobs} jobs x {args.reps} runs, median "
          f"{statistics.median(published):,.0f} jobs/s "
          f"(runs: {', '.join(f'{r:,.0f}' for r in published)})")
    mine = statistics.median(r for r, _ in ours)
    print(f"ratio: {mine / statistics.median(naive):.1f}x (goal: >= 50x); against "
          f"naive+publish: {mine / statistics.median(published):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
