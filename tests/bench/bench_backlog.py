"""Backlog: ``--jobs`` jobs waiting in Kafka with the workers stopped, then drained.

The jobs are produced first; then the real bridge starts and admits them all into the
PostgreSQL backlog while no worker runs. Measured: the bridge's resident memory (sampled,
and its peak), the Redis memory of the pipeline's database (every key's ``MEMORY USAGE``:
only the dispatch window should be there), PostgreSQL rows and bytes added, and that
nothing was lost (every task id once, the group's committed offsets = the jobs, no
rejection). Then the workers start (``bench`` engine, no gpu time) and the drain is timed:
on ``--drain-s`` seconds of it (a subset: the whole backlog would take hours on a small
machine), with the rate and the time the whole backlog would take at that rate.
Goals: Redis bounded by the window, bridge RSS under 200 MB, nothing lost.

    .venv/bin/python tests/bench/bench_backlog.py [--jobs 100000] [--drain-s 90]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import BenchStack, rss_mb, stack_lock, write_result  # noqa: E402

TABLES = ("tasks", "task_events", "tenants", "task_dependencies")


def pg_bytes(stack: BenchStack) -> int:
    from sqlalchemy import text

    with stack.db.connect() as conn:
        sizes = " + ".join(f"pg_total_relation_size('{t}')" for t in TABLES)
        return int(conn.execute(text(f"SELECT {sizes}")).scalar())


def redis_window(stack: BenchStack) -> dict[str, int]:
    """The pipeline's Redis database: every key's ``MEMORY USAGE``, split into the status
    cache (``sonic:status:*``, one key per job) and the rest (Celery's queues: the window),
    and the Celery messages queued."""
    client = stack.redis()
    out = {"keys": 0, "bytes": 0, "status_keys": 0, "status_bytes": 0, "messages": 0}
    sampled: list[int] = []
    for k in client.scan_iter(count=5000):
        if k.startswith(b"sonic:status:"):
            out["status_keys"] += 1
            if len(sampled) < 500:  # their sizes are alike: a sample, not 100,000 calls
                sampled.append(int(client.memory_usage(k) or 0))
            continue
        out["keys"] += 1
        out["bytes"] += int(client.memory_usage(k) or 0)
        if client.type(k) == b"list":
            out["messages"] += int(client.llen(k))
    if sampled:
        out["status_bytes"] = out["status_keys"] * sum(sampled) // len(sampled)
    return out


def pg_row_bytes(stack: BenchStack) -> int:
    """Bytes of the topic's rows in ``tasks`` and ``task_events`` (tuple data, no index)."""
    from sqlalchemy import text

    with stack.db.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce((SELECT sum(pg_column_size(t.*)) FROM tasks t "
            "WHERE kafka_topic = :t), 0) + coalesce((SELECT sum(pg_column_size(e.*)) "
            "FROM task_events e JOIN tasks t USING (task_id) WHERE t.kafka_topic = :t), 0)"),
            {"t": stack.topic}).scalar())


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def committed(stack: BenchStack) -> int:
    """Offsets the bridge's group committed on the topic, all partitions together."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(group_id=stack.settings.consumer_group, enable_auto_commit=False,
                             **stack.settings.kafka_client_config())
    try:
        parts = consumer.partitions_for_topic(stack.topic) or set()
        return sum(consumer.committed(TopicPartition(stack.topic, p)) or 0 for p in parts)
    finally:
        consumer.close()


def produce_fast(stack: BenchStack, n: int) -> float:
    from kafka import KafkaProducer

    started = time.monotonic()
    producer = KafkaProducer(linger_ms=50, batch_size=512 * 1024, acks="all",
                             **stack.settings.kafka_client_config())
    for i in range(n):
        job = stack.job(f"{stack.topic}-{i:07d}")
        producer.send(stack.topic, key=job["task_id"].encode(), value=json.dumps(job).encode())
    producer.flush()
    producer.close()
    return time.monotonic() - started


def admission_curve(stack: BenchStack) -> list[tuple[float, int]]:
    """Rows admitted per half second, from the first admission (PostgreSQL clock)."""
    from sqlalchemy import text

    with stack.db.connect() as conn:
        rows = conn.execute(text(
            "WITH t AS (SELECT extract(epoch FROM received_at) AS at FROM tasks "
            "WHERE kafka_topic = :t) SELECT floor((at - (SELECT min(at) FROM t)) * 2) / 2 "
            "AS slot, count(*) FROM t GROUP BY 1 ORDER BY 1"), {"t": stack.topic}).all()
    return [(float(slot), int(count)) for slot, count in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--drain-s", type=float, default=90.0)
    args = parser.parse_args()
    n = args.jobs
    result: dict[str, Any] = {"jobs": n}
    with stack_lock(), BenchStack("backlog", backlog_max=max(10 * n, 1_000_000),
                                  backlog_low=max(9 * n, 900_000)) as stack:
        before = pg_bytes(stack)
        result["produce_s"] = produce_fast(stack, n)
        stack.start_bridge()
        pid = stack.pid("bridge")
        samples, started = [], time.monotonic()
        while (admitted := stack.count()) < n and time.monotonic() - started < 600:
            samples.append((time.monotonic() - started, admitted, rss_mb(pid)[0]))
            time.sleep(0.5)
        time.sleep(3)  # the dispatcher fills its window; offsets are committed
        rss, peak = rss_mb(pid)
        result.update({
            "admitted": stack.count(), "admit_s": time.monotonic() - started,
            "bridge_rss_mb": rss, "bridge_peak_rss_mb": peak,
            "rss_samples": samples, "admission_curve": admission_curve(stack),
            "redis": redis_window(stack),
            "window": stack.settings.gpu_slots * stack.settings.dispatch_lead,
            "pg_rows": stack.count(), "pg_bytes": pg_bytes(stack) - before,
            "pg_row_bytes": pg_row_bytes(stack), "pg_total_bytes": pg_bytes(stack),
            "rejected": stack.count("AND status = 'rejected'"),
            "committed_offsets": committed(stack)})
        result["lost"] = n - result["pg_rows"]

        stack.start_workers()
        stack.wait_workers()
        drain_started = time.monotonic()
        bridge_cpu0 = cpu_s(pid)
        done0 = stack.count("AND status = 'completed'")
        redis_max = 0
        while time.monotonic() - drain_started < args.drain_s:
            redis_max = max(redis_max, redis_window(stack)["bytes"])
            time.sleep(5)
        drained = stack.count("AND status = 'completed'") - done0
        elapsed = time.monotonic() - drain_started
        rate = drained / elapsed
        result["bridge_cpu_share_draining"] = (cpu_s(pid) - bridge_cpu0) / elapsed
        result.update({"drain_subset_jobs": drained, "drain_subset_s": elapsed,
                       "drain_rate_per_s": rate, "drain_full_estimate_s": n / rate if rate
                       else float("inf"), "redis_max_bytes_draining": redis_max,
                       "failed": stack.count("AND status = 'failed'")})
        stack.stop("bridge")
        for pool in ("gpu", "cpu", "io"):
            stack.stop(pool)
        write_result("backlog", result)  # before the clean-up, which takes a while
    print(f"cores: {os.cpu_count()}")
    print(f"backlog {n:,} jobs: admitted {result['admitted']:,} in {result['admit_s']:.1f} s "
          f"with no worker; lost {result['lost']}, rejected {result['rejected']}, committed "
          f"offsets {result['committed_offsets']:,}")
    print(f"bridge RSS {result['bridge_rss_mb']:.0f} MB (peak {result['bridge_peak_rss_mb']:.0f}"
          f" MB; goal < 200); Redis db {result['redis']['bytes'] / 1024:.1f} KiB in "
          f"{result['redis']['keys']} keys, {result['redis']['messages']} messages (window "
          f"{result['window']} jobs), and the status cache "
          f"{result['redis']['status_bytes'] / 2**20:.1f} MiB in {result['redis']['status_keys']:,}"
          f" keys; PostgreSQL {result['pg_row_bytes'] / 2**20:.0f} MiB of row data for "
          f"{result['pg_rows']:,} rows")
    print(f"drain (subset): {result['drain_subset_jobs']} jobs in {result['drain_subset_s']:.0f}"
          f" s = {result['drain_rate_per_s']:.1f} jobs/s -> the whole backlog in about "
          f"{result['drain_full_estimate_s'] / 3600:.1f} h; Redis at most "
          f"{result['redis_max_bytes_draining'] / 1024:.1f} KiB while draining (the status "
          f"cache apart); the bridge used {100 * result['bridge_cpu_share_draining']:.0f} % "
          "of a core meanwhile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
