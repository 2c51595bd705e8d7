"""GPU saturation: the fraction of wall time one gpu worker is busy with a backlog waiting.

One gpu worker whose inference takes a fixed time (the ``bench`` engine sleeping
``--sleep`` seconds: a stand-in for the model), the real preprocess, encode, upload and
callback stages around it, ``--jobs`` jobs produced at once (the backlog waits in
PostgreSQL; the dispatcher keeps its window ahead of the gpu). Busy = the gpu stage's
running time (first ``started`` to ``succeeded`` events of each job) over the wall time
from the first gpu start to the last gpu end. Goal: at least 97 %.

Baseline, same stack and jobs: one job at a time, stage after stage (the next job is
produced when the last one's callback arrived), ``--baseline-jobs`` of them (the fraction
is per job, so a few suffice).

    .venv/bin/python tests/bench/bench_gpu.py [--jobs 50] [--sleep 2] [--baseline-jobs 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import BenchStack, stack_lock, write_result  # noqa: E402


def busy(stack: BenchStack, task_ids: list[str]) -> dict[str, Any]:
    """The gpu stage's intervals (seconds from the first start) and its busy fraction."""
    lines = stack.timelines(task_ids)
    spans = sorted((s["gpu"]["started"], s["gpu"]["succeeded"])
                   for s in (line["stages"] for line in lines.values())
                   if "succeeded" in s.get("gpu", {}))
    if not spans:
        return {"fraction": 0.0, "intervals": [], "jobs": 0}
    first, last = spans[0][0], max(end for _, end in spans)
    held = sum(end - start for start, end in spans)
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    return {"fraction": held / (last - first), "wall_s": last - first, "busy_s": held,
            "jobs": len(spans), "completed": sum(1 for v in lines.values()
                                                 if v["status"] == "completed"),
            "gap_p50_ms": sorted(gaps)[len(gaps) // 2] * 1000 if gaps else 0.0,
            "gap_max_ms": max(gaps) * 1000 if gaps else 0.0,
            "intervals": [(a - first, b - first) for a, b in spans]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--sleep", type=float, default=2.0, help="gpu seconds per job")
    parser.add_argument("--baseline-jobs", type=int, default=10)
    args = parser.parse_args()
    with stack_lock(), BenchStack("gpu", bench_engine_sleep_s=args.sleep) as stack:
        stack.start_workers()
        stack.wait_workers()
        stack.start_bridge()
        warm = [stack.job(f"{stack.topic}-warm-{i}") for i in range(2)]
        stack.wait_callbacks(list(stack.produce(warm)), 120)

        jobs = [stack.job(f"{stack.topic}-ours-{i}") for i in range(args.jobs)]
        started = time.monotonic()
        arrived = stack.wait_callbacks(list(stack.produce(jobs)),
                                       60 + args.jobs * (args.sleep + 5))
        ours = {**busy(stack, list(arrived)), "elapsed_s": time.monotonic() - started}

        producer = stack.producer()
        base_ids = []
        for i in range(args.baseline_jobs):
            job = stack.job(f"{stack.topic}-serial-{i}")
            stack.produce([job], producer=producer)
            stack.wait_callbacks([job["task_id"]], 60 + args.sleep)
            base_ids.append(job["task_id"])
        producer.close()
        base = busy(stack, base_ids)
    ratio = ours["fraction"] / base["fraction"] if base["fraction"] else float("nan")
    print(f"cores: {os.cpu_count()}")
    print(f"gpu busy, {ours['jobs']} jobs of {args.sleep:.1f} s in backlog: "
          f"{100 * ours['fraction']:.2f} % of {ours['wall_s']:.1f} s (gaps p50 "
          f"{ours['gap_p50_ms']:.0f} ms, max {ours['gap_max_ms']:.0f} ms)")
    print(f"stage after stage, {base['jobs']} jobs: {100 * base['fraction']:.2f} % "
          f"-> x{ratio:.2f} (goal >= 97 %)")
    write_result("gpu", {"sleep_s": args.sleep, "ours": ours, "baseline": base,
                         "ratio": ratio})
    return 0


if __name__ == "__main__":
    sys.exit(main())
