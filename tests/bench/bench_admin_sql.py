"""Admin SQL at 1,000,000 task rows: every query of docs/admin-sql.md under a second.

    .venv/bin/python tests/bench/bench_admin_sql.py [--rows N] [--days D] [--json PATH]
                                                   [--plans PATH]

Loads N generated jobs (received evenly over D days, with their events: see
tests/support/admin_sql.py) into a scratch database migrated to head, then runs each
documented query three times under EXPLAIN (ANALYZE, BUFFERS) and reports the median
and the slowest (planning + execution, as PostgreSQL measures them). Exit status 1 when
a query's median reaches one second. ``--plans`` writes every query's last plan
(``make bench-admin-sql`` puts them in bench-results/admin_sql_plans.md). The scratch
database is dropped at the end. ``make bench-admin-sql`` runs it under the stack lock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.settings import load as load_settings  # noqa: E402
from pipeline.state.db import make_db_engine  # noqa: E402
from tests.support import admin_sql  # noqa: E402

LIMIT_MS = 1000.0
RUNS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plans", type=Path)
    args = parser.parse_args(argv)

    began = time.monotonic()
    results, plans = [], []
    with admin_sql.scratch_database(load_settings(), "sonic_admin_sql_bench") as scratch:
        db_engine = make_db_engine(scratch, pool_size=1)
        try:
            loaded = admin_sql.load(db_engine, args.rows, args.days)
            print(f"loaded {loaded['tasks']:,} jobs and {loaded['events']:,} events over "
                  f"{args.days:g} days in {loaded['load_s']:.0f} s "
                  f"(+{loaded['vacuum_s']:.0f} s VACUUM ANALYZE)")
            for query in admin_sql.documented_queries():
                timed = [admin_sql.explain(db_engine, query) for _ in range(RUNS)]
                ms = [t.ms for t in timed]
                median = statistics.median(ms)
                results.append({"query": query.title, "median_ms": round(median, 1),
                                "max_ms": round(max(ms), 1), "ok": median < LIMIT_MS})
                plans.append(f"## {query.title}\n\nmedian {median:.1f} ms, slowest "
                             f"{max(ms):.1f} ms of {RUNS}\n\n```sql\n{query.sql}\n```\n\n"
                             f"```\n{timed[-1].plan}\n```\n")
                print(f"{median:9.1f} ms  (slowest {max(ms):7.1f})  "
                      f"{'ok  ' if median < LIMIT_MS else 'SLOW'}  {query.title}")
        finally:
            db_engine.dispose()
    over = [r["query"] for r in results if not r["ok"]]
    print(f"{len(results)} queries at {args.rows:,} rows: "
          f"{'all under a second' if not over else 'over a second: ' + ', '.join(over)} "
          f"({time.monotonic() - began:.0f} s in all)")
    if args.plans:
        args.plans.parent.mkdir(parents=True, exist_ok=True)
        args.plans.write_text(f"# Admin SQL plans at {args.rows:,} task rows "
                              f"({loaded['events']:,} events, {args.days:g} days)\n\n"
                              + "\n".join(plans))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": args.rows, "days": args.days,
                                         "events": loaded["events"], "queries": results},
                                        indent=2))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
