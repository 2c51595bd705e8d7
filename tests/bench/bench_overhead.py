"""Orchestration overhead: what the pipeline adds around its stages, against a plain
five-step Celery chain of no-op tasks measured in the same run.

Ours: jobs with tiny media (a 256x256 portrait, half a second of speech) and the ``bench``
engine (returns at once), produced to Kafka and carried by the real bridge, dispatcher
and worker pools to a signed callback. Per job, the overhead is the time from produce to
the callback's arrival minus the time inside the preprocess, gpu, encode and upload
stages (``task_events.duration_s``); where the rest goes is broken down from the task's
events. Baseline: ``tests/bench/noop_chain.py`` (send to the last step's end).
Both at idle (one job at a time; median of ``--repeat`` runs' p50/p99) and at a steady
``--rate`` jobs/s for ``--load-s`` seconds. Goal: our idle p50 at most twice the chain's.

    .venv/bin/python tests/bench/bench_overhead.py [--idle-jobs 30] [--repeat 3] [--rate 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import (ROOT, BenchStack, median, quantile, stack_lock,  # noqa: E402
                                write_result)

#: Stages whose own time is not overhead (the callback's request is the end point).
WORK_STAGES = ("preprocess", "gpu", "encode", "upload")
HOPS = ("preprocess", "gpu", "encode", "upload", "callback")


def _ms(values: list[float], samples: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"p50_ms": quantile(values, 0.5) * 1000,
                           "p99_ms": quantile(values, 0.99) * 1000, "n": len(values)}
    if samples:
        out["samples_s"] = list(values)
    return out


# --- the baseline ----------------------------------------------------------------------
def _noop_worker() -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open("/tmp/sonic-bench-noop.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "celery", "-A", "tests.bench.noop_chain",
                             "worker", "-Q", "bench-noop", "-P", "prefork", "-c", "2",
                             "--loglevel", "WARNING", "-n", "bench-noop@%h"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _chain_latencies(redis_db: Any, n: int, rate: float | None, prefix: str) -> list[float]:
    from tests.bench import noop_chain

    sent: dict[str, float] = {}
    ends: dict[str, float] = {}

    def take(block: float) -> None:
        popped = redis_db.blpop(noop_chain.DONE_KEY, timeout=block)
        value = popped[1] if popped else None
        while value is not None:
            job_id, at = value.decode().split()
            ends[job_id] = float(at)
            value = redis_db.lpop(noop_chain.DONE_KEY)

    started = time.monotonic()
    for i in range(n):
        job_id = f"{prefix}-{i}"
        if rate:
            pause = started + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        sent[job_id] = time.time()
        noop_chain.send(job_id)
        if not rate:
            take(10)
    deadline = time.monotonic() + 60
    while len(ends) < n and time.monotonic() < deadline:
        take(1)
    return [ends[j] - sent[j] for j in sent if j in ends]


def run_baseline(idle_jobs: int, repeat: int, rate: float, load_s: float) -> dict[str, Any]:
    import redis

    from tests.bench import noop_chain

    client = redis.Redis.from_url(noop_chain.broker_url())
    client.flushdb()
    worker = _noop_worker()
    try:
        _chain_latencies(client, 20, None, "warm")  # waits for the worker too
        idle = [_ms(_chain_latencies(client, idle_jobs * 3, None, f"idle{r}"), samples=True)
                for r in range(repeat)]
        load = _ms(_chain_latencies(client, int(rate * load_s), rate, "load"), samples=True)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        client.flushdb()
    return {"idle_runs": idle, "idle_p50_ms": median([r["p50_ms"] for r in idle]),
            "idle_p99_ms": median([r["p99_ms"] for r in idle]), "load": load}


# --- ours ------------------------------------------------------------------------------
def breakdown(sent: float, arrived: float, line: dict[str, Any]) -> dict[str, float] | None:
    """Where one job's time went, seconds; None when a stage's events are missing."""
    stages = line["stages"]
    if line["status"] != "completed" or any(
            "started" not in stages.get(s, {}) for s in HOPS) or any(
            "succeeded" not in stages.get(s, {}) for s in WORK_STAGES):
        return None
    inside = sum(stages[s]["duration_s"] for s in WORK_STAGES)
    hops = sum(stages[b]["started"] - stages[a]["succeeded"] for a, b in zip(HOPS, HOPS[1:]))
    booked = sum(stages[s]["succeeded"] - stages[s]["started"] - stages[s]["duration_s"]
                 for s in WORK_STAGES)
    total = arrived - sent
    return {"total": total, "inside_stages": inside, "overhead": total - inside,
            "kafka_to_row": line["received"] - sent,
            "row_to_dispatch": line["queued"] - line["received"],
            "dispatch_to_first_stage": stages["preprocess"]["started"] - line["queued"],
            "between_stages": hops, "stage_bookkeeping": booked,
            "callback_stage_to_arrival": arrived - stages["callback"]["started"],
            **{f"stage_{s}": stages[s]["duration_s"] for s in WORK_STAGES}}


def _ours_run(stack: BenchStack, jobs: list[dict[str, Any]], rate: float | None,
              timeout: float) -> list[dict[str, float]]:
    if rate:
        sent = stack.produce(jobs, rate=rate)
        arrived = stack.wait_callbacks(list(sent), timeout)
    else:
        producer = stack.producer()
        sent, arrived = {}, {}
        for job in jobs:
            sent.update(stack.produce([job], producer=producer))
            arrived.update(stack.wait_callbacks([job["task_id"]], timeout))
        producer.close()
    lines = stack.timelines(list(arrived))
    parts = [breakdown(sent[t], arrived[t], lines[t]) for t in arrived if t in lines]
    return [p for p in parts if p is not None]


def _summary(parts: list[dict[str, float]]) -> dict[str, Any]:
    keys = parts[0].keys() if parts else []
    return {"overhead": _ms([p["overhead"] for p in parts]),
            "total": _ms([p["total"] for p in parts]),
            "breakdown_p50_ms": {k: quantile([p[k] for p in parts], 0.5) * 1000 for k in keys}}


def run_ours(idle_jobs: int, repeat: int, rate: float, load_s: float) -> dict[str, Any]:
    with BenchStack("overhead", bench_engine_sleep_s=0) as stack:
        stack.start_workers()
        stack.wait_workers()
        stack.start_bridge()
        _ours_run(stack, [stack.job(f"{stack.topic}-warm-{i}") for i in range(3)], None, 120)
        idle_runs, samples = [], []
        for r in range(repeat):
            parts = _ours_run(stack, [stack.job(f"{stack.topic}-idle{r}-{i}")
                                      for i in range(idle_jobs)], None, 60)
            idle_runs.append(_summary(parts))
            samples += [p["overhead"] for p in parts]
        n = int(rate * load_s)
        started = time.monotonic()
        load_parts = _ours_run(stack, [stack.job(f"{stack.topic}-load-{i}") for i in range(n)],
                               rate, 120 + 3 * n)
        elapsed = time.monotonic() - started
    return {"idle_runs": idle_runs,
            "idle_p50_ms": median([r["overhead"]["p50_ms"] for r in idle_runs]),
            "idle_p99_ms": median([r["overhead"]["p99_ms"] for r in idle_runs]),
            "idle_samples_s": samples,
            "load": {**_summary(load_parts), "offered_per_s": rate, "jobs": n,
                     "completed": len(load_parts), "drained_in_s": elapsed,
                     "samples_s": [p["overhead"] for p in load_parts]}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-jobs", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--load-s", type=float, default=4.0,
                        help="seconds of load (at 50/s on 2 cores the jobs queue: keep short)")
    args = parser.parse_args()
    with stack_lock():
        base = run_baseline(args.idle_jobs, args.repeat, args.rate, args.load_s)
        ours = run_ours(args.idle_jobs, args.repeat, args.rate, args.load_s)
    ratio = ours["idle_p50_ms"] / base["idle_p50_ms"]
    print(f"cores: {os.cpu_count()}")
    print(f"plain 5-step chain: idle p50 {base['idle_p50_ms']:.1f} ms p99 "
          f"{base['idle_p99_ms']:.1f} ms; at {args.rate:.0f}/s p50 {base['load']['p50_ms']:.1f}"
          f" ms p99 {base['load']['p99_ms']:.1f} ms")
    print(f"ours (overhead): idle p50 {ours['idle_p50_ms']:.1f} ms p99 {ours['idle_p99_ms']:.1f}"
          f" ms; at {args.rate:.0f}/s p50 {ours['load']['overhead']['p50_ms']:.1f} ms p99 "
          f"{ours['load']['overhead']['p99_ms']:.1f} ms ({ours['load']['completed']}/"
          f"{ours['load']['jobs']} in {ours['load']['drained_in_s']:.0f} s)")
    print("where it goes at idle (p50 ms): " + ", ".join(
        f"{k} {v:.1f}" for k, v in ours["idle_runs"][-1]["breakdown_p50_ms"].items()))
    print(f"ratio idle p50: {ratio:.2f}x (goal <= 2x)")
    write_result("overhead", {"baseline": base, "ours": ours, "ratio_idle_p50": ratio,
                              "rate": args.rate, "repeat": args.repeat})
    return 0


if __name__ == "__main__":
    sys.exit(main())
