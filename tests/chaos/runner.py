"""``python -m tests.chaos [--scenario NAME]... [--jobs N] [--seed S] [--ci] [--json PATH]``

Runs fault scenarios (every ``tests/chaos/scenarios_*.py``), each on a private stack of its
own (:class:`tests.chaos.harness.ChaosStack`), prints one table and writes the rows as
JSON (default ``bench-results/chaos.json``). The long versions by default; ``--ci`` runs
the short ones the normal suite runs. Exit status: 0 when every scenario passed its audit,
1 when one lost or duplicated a job (or failed otherwise), 2 for a bad argument.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tests.chaos.harness import ROOT, ChaosStack
from tests.chaos.report import table, write_json
from tests.chaos.scenario import Entry, entries


def run_one(entry: Entry, jobs: int, seed: int) -> dict[str, Any]:
    """One scenario on a fresh private stack; its report row (a failure to start or an
    exception is a failing row, never a crash of the run)."""
    began = time.monotonic()
    stack = ChaosStack(name=entry.name[:20], seed=seed, overrides=entry.overrides)
    try:
        stack.start()
        row = entry.run(stack, jobs, seed).row()
        row["stack_start_s"] = round(stack.started_s, 1)
    except Exception as exc:  # noqa: BLE001 - reported as a failing row
        row = {"scenario": entry.name, "jobs": jobs, "lost": None, "duplicated": None,
               "recovery_s": None, "wall_s": round(time.monotonic() - began, 1),
               "passed": False, "problems": [f"{type(exc).__name__}: {exc}",
                                             traceback.format_exc()[-1500:]]}
    finally:
        stack.close()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="run this scenario (repeatable; default: all)")
    parser.add_argument("--jobs", type=int, help="jobs per scenario (default: its own)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every fault drawn")
    parser.add_argument("--ci", action="store_true", help="the short versions")
    parser.add_argument("--json", type=Path, default=ROOT / "bench-results" / "chaos.json")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    found = entries()
    if args.list:
        for name, entry in found.items():
            print(f"{name:<28} ci {entry.ci_jobs:>3} jobs, long {entry.long_jobs:>4} jobs")
        return 0
    names = args.scenario or list(found)
    unknown = [n for n in names if n not in found]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(found)}",
              file=sys.stderr)
        return 2
    rows = []
    for name in names:
        entry = found[name]
        jobs = args.jobs or (entry.ci_jobs if args.ci else entry.long_jobs)
        print(f"chaos: {name} ({jobs} jobs, seed {args.seed})", file=sys.stderr, flush=True)
        rows.append(run_one(entry, jobs, args.seed))
        write_json(rows, args.json, seed=args.seed, mode="ci" if args.ci else "long")
    print(table(rows))
    print(f"\n{args.json}")
    return 0 if all(r.get("passed") for r in rows) else 1
