"""Process faults: workers killed (-9) in every pool, the bridge killed (-9) again and again
during admission and during dispatch, a worker frozen (SIGSTOP) past its lease and then
resumed while another worker finished its job.

Every choice (which pool, which stage, the whole pool or one of its worker processes,
how long to wait) is drawn from the run's seeded RNG.
"""

from __future__ import annotations

import time

from sqlalchemy import text

from tests.chaos.harness import LEASE_TTL_S, POOL_NAMES
from tests.chaos.scenario import Run, Scenario

#: The stages each pool runs (a kill aims at a job holding one of them).
POOL_STAGES = {"gpu": ("gpu",), "cpu": ("preprocess", "encode"), "io": ("upload", "callback")}


def _aim(run: Run, ids: list[str], stage: str, timeout_s: float = 6) -> str | None:
    """A job of ``ids`` holding ``stage`` now, or None after ``timeout_s``."""
    try:
        return run.stack.wait_stage(ids, stage, timeout_s=timeout_s)
    except AssertionError:
        return None


def kill_workers(run: Run) -> None:
    """kill -9 workers of every pool while the jobs run: each pool at least once (seeded
    order), then seeded pools; a kill takes the whole pool (parent, children, ffmpeg:
    a machine dying, brought back after a seeded pause) or one worker process (its Celery
    parent starts another)."""
    stack = run.stack
    ids = run.produce(run.jobs)
    kills = max(len(POOL_NAMES), run.jobs // 3)
    order = list(POOL_NAMES)
    run.rng.shuffle(order)
    hits = 0
    for i in range(kills):
        if run.settled():
            break
        pool = order[i] if i < len(order) else run.rng.choice(POOL_NAMES)
        stage = run.rng.choice(POOL_STAGES[pool])
        hits += _aim(run, ids, stage) is not None
        run.sleep(0.0, 0.15)
        if run.rng.random() < 0.5 and stack.children(pool):
            stack.kill_child(pool)
        else:
            stack.kill(pool)
            run.sleep(0.2, 1.5)
            stack.start_process(pool, wait=False)
    run.notes["kills_mid_stage"] = hits


def kill_bridge_admission(run: Run) -> None:
    """Jobs produced in bursts, the bridge killed -9 during each: right after a burst
    (admitting it, or between its insert and its offset commit), or while it starts
    (joining the group, its first poll); restarted each time."""
    stack = run.stack
    rounds = max(2, run.jobs // 5)
    sizes = [run.jobs // rounds + (1 if i < run.jobs % rounds else 0) for i in range(rounds)]
    for size in sizes:
        if run.rng.random() < 0.5:
            run.produce(size)
            run.sleep(0.0, 0.4)
            stack.kill("bridge")
            stack.start_process("bridge")
        else:
            stack.kill("bridge")
            stack.start_process("bridge", wait=False)
            run.produce(size)
            run.sleep(0.5, 3.0)
            stack.kill("bridge")
            stack.start_process("bridge")
    run.notes["rounds"] = rounds


#: What a job with a deadline may end as: done in time, expired in the backlog, or stopped
#: under way at its deadline.
IN_TIME = ("completed", "expired", "failed:task.deadline")


def kill_bridge_dispatch(run: Run) -> None:
    """Every job admitted first, then the bridge killed -9 again and again while its
    dispatcher moves the backlog into the Celery window (between a publish and its
    commit, mid-pick), restarted after a seeded pause. A third of the jobs have a short
    seeded ``ttl_s``: whatever the kills, none of them may start past its deadline."""
    stack = run.stack
    timed = run.jobs // 3
    ids = run.produce(run.jobs - timed)
    for _ in range(timed):
        ids += run.produce(1, expect=IN_TIME, ttl_s=round(run.rng.uniform(1.0, 8.0), 2))
    stack.wait_until(lambda: stack.counts(ids)["absent"] == 0, 60, "every job admitted")
    kills = max(2, run.jobs // 4)
    in_backlog = []
    for kill in range(kills):
        if run.settled():
            break
        run.sleep(0.0, 0.4) if kill == 0 else run.sleep(0.1, 1.2)
        counts = stack.counts(ids)
        in_backlog.append(counts.get("received", 0) + counts.get("waiting", 0))
        stack.kill("bridge")
        run.sleep(0.0, 1.0)
        stack.start_process("bridge")
    run.notes["backlog_at_kills"] = in_backlog


#: (pool, stage) a frozen worker may hold.
FREEZE_TARGETS = (("gpu", "gpu"), ("cpu", "encode"), ("cpu", "preprocess"), ("io", "upload"))


def frozen_worker(run: Run) -> None:
    """A worker frozen with SIGSTOP (its whole process group) while it holds a stage's
    lease, past the lease's expiry: a second worker of the pool takes the stage over and
    the job settles; then the frozen worker is resumed and must change nothing (no second
    outcome, no failure of the finished job, no second callback id)."""
    stack = run.stack
    rounds = min(len(FREEZE_TARGETS), max(1, run.jobs // 3))
    targets = [FREEZE_TARGETS[1], *run.rng.sample(
        [t for t in FREEZE_TARGETS if t != FREEZE_TARGETS[1]], rounds - 1)]
    twins = sorted({f"{pool}-b" for pool, _ in targets})
    for twin in twins:
        stack.start_process(twin, pool=twin[:-2], wait=False)
    for twin in twins:
        stack.wait_serving(twin)
    per_round = max(1, run.jobs // rounds)
    frozen: list[str] = []
    try:
        for pool, stage in targets:
            for _ in range(3):  # a short stage may end before it is caught: new jobs
                ids = run.produce(per_round)
                task = _aim(run, ids, stage, timeout_s=60)
                pid = stack.lease_owner_pid(task) if task else None
                name = stack.process_of(pid) if pid else None
                if task is not None and name is not None:
                    break
            else:
                continue
            stack.freeze(name)
            frozen.append(f"{name}:{stage}")
            stack.wait_until(lambda: stack.settled([task]), 60 + LEASE_TTL_S,
                             f"{task} finished by another worker")
            stack.thaw(name)
            # The resumed worker's heartbeat (1 s) finds its lease gone; its stage ends.
            time.sleep(2)
    finally:
        for twin in twins:
            stack.stop_process(twin)
    run.notes["frozen"] = frozen
    with stack.db.connect() as conn:  # outcomes of resumed copies, discarded
        run.notes["lease_lost_events"] = conn.execute(text(
            "SELECT count(*) FROM task_events WHERE task_id = ANY(:ids) "
            "AND event = 'lease_lost'"), {"ids": run.ids}).scalar()


SCENARIOS = [
    Scenario("kill-workers", kill_workers, ci_jobs=6, long_jobs=60,
             doc="kill -9 workers of every pool during the run"),
    Scenario("kill-bridge-admission", kill_bridge_admission, ci_jobs=6, long_jobs=60,
             doc="kill -9 the bridge repeatedly while it admits"),
    Scenario("kill-bridge-dispatch", kill_bridge_dispatch, ci_jobs=6, long_jobs=60,
             doc="kill -9 the bridge repeatedly while it dispatches"),
    Scenario("frozen-worker", frozen_worker, ci_jobs=3, long_jobs=24,
             doc="SIGSTOP a worker past its lease, resume it after another finished"),
]
