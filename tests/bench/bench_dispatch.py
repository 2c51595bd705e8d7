"""The dispatcher's pick at 1,000 and at 1,000,000 backlog rows.

Each backlog is a topic of its own in the real PostgreSQL: 1,000,000 jobs over 10,000
tenants and 100,000 ordering keys (ten jobs a key: one runnable head, nine waiting) with
priorities 0-9, against 1,000 jobs over 10 tenants, one key each. Each pick is the
production statement in its own transaction with its commit (as the dispatcher runs it),
repeated ``--picks`` times; printed: p50/p99 per backlog and the ratio of the large to the
small one (goals: p99 under 5 ms, ratio under 1.5).

    .venv/bin/python tests/bench/bench_dispatch.py [--rows 1000000] [--picks 2000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from pipeline.scheduler import pick  # noqa: E402
from pipeline.settings import load  # noqa: E402
from pipeline.state.db import make_db_engine  # noqa: E402

_FILL = text("""
INSERT INTO tasks (task_id, kafka_topic, tenant, ordering_key, priority, status)
SELECT :topic || '-' || g, :topic, 't' || (g % :tenants), :topic || '-k' || (g % :keys),
       g % 10, CASE WHEN g < :keys THEN 'received' ELSE 'waiting' END
FROM generate_series(0, :rows - 1) AS g ORDER BY g""")


def fill(db_engine, topic: str, rows: int, tenants: int, keys: int) -> float:
    started = time.perf_counter()
    with db_engine.begin() as conn:
        conn.execute(_FILL, {"topic": topic, "rows": rows, "tenants": tenants, "keys": keys})
    with db_engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE tasks, tenants"))
    return time.perf_counter() - started


def picks(db_engine, topic: str, n: int) -> list[float]:
    took = []
    for _ in range(n):
        started = time.perf_counter()
        with db_engine.begin() as conn:
            if pick.pick(conn, topic, 1_000_000) is None:
                raise RuntimeError("the backlog ran dry")
        took.append(time.perf_counter() - started)
    return took


def drop(db_engine, topic: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})


def quantiles(took: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(took, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--picks", type=int, default=2000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    db_engine = make_db_engine(load())
    print(f"cores: {os.cpu_count()}")
    results = {}
    for rows, tenants, keys in ((1_000, 10, 1_000), (args.rows, 10_000, 100_000)):
        topic = f"bench-pick-{uuid.uuid4().hex[:8]}"
        try:
            loaded = fill(db_engine, topic, rows, tenants, keys)
            picks(db_engine, topic, 50)  # warm the caches
            p50, p99 = quantiles(picks(db_engine, topic, min(args.picks, keys - 50)))
        finally:
            drop(db_engine, topic)
        results[rows] = (p50, p99)
        print(f"backlog {rows:>9,} rows ({tenants:,} tenants, {keys:,} keys; loaded in "
              f"{loaded:.1f} s): pick p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    (s50, s99), (l50, l99) = results[1_000], results[args.rows]
    print(f"ratio large/small: p50 {l50 / s50:.2f}, p99 {l99 / s99:.2f} "
          f"(goals: p99 < 5 ms, ratio < 1.5)")
    db_engine.dispose()
    if args.json:
        args.json.write_text(json.dumps({
            "cores": os.cpu_count(), "rows": args.rows,
            "small": {"p50_ms": s50, "p99_ms": s99}, "large": {"p50_ms": l50, "p99_ms": l99}},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
