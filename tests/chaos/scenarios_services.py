"""Service faults: Redis, Kafka or PostgreSQL restarted twice in the middle of a run.

Each scenario produces a first part of its jobs, restarts the service while stages run,
produces a second part, restarts it again while those run (Redis and PostgreSQL: more
jobs come while it is down), then produces a last few jobs (every process must serve
again after the second restart, by itself: the harness starts nothing again). It ends with the audit and three checks of its own:

- no process of the stack was restarted, and each is still running (the bridge, with its
  dispatcher and status relay threads, and the gpu, cpu and io pools);
- every status event of the run's jobs was published to Kafka (the relay came back);
- the recovery time of each restart: from the service answering again to the first stage
  that succeeds after it (``task_events.at``, PostgreSQL's clock).

    outcome = restart_twice(stack, "postgres", jobs=12)
    assert outcome.passed, outcome.problems
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import text

from tests.chaos.audit import Audit
from tests.chaos.harness import FINAL, POOL_NAMES, ChaosStack
# The runner reads a scenario module's OVERRIDES: the same stack settings as the CI module.
from tests.chaos.services_stack import OVERRIDES as STACK_OVERRIDES

OVERRIDES = dict(STACK_OVERRIDES)

#: How each service is taken down: Redis and Kafka are killed (-9; Redis keeps its
#: append-only file the first time and loses it the second); PostgreSQL gets its fast
#: shutdown (every session cut at once), the way an operator's restart or a failover does.
HOW: dict[str, list[dict[str, Any]]] = {
    "redis": [{"kill": True}, {"kill": True, "lose_data": True}],
    "kafka": [{"kill": True}, {"kill": True}],
    "postgres": [{"kill": False}, {"kill": False}],
}


@dataclass
class Outcome:
    """What a scenario measured: the audit, the recovery time of each fault (seconds from
    the fault's end to the first stage succeeding after it), wall time, and ``problems``
    beyond the audit's (a process restarted or dead, events never published)."""

    name: str
    audit: Audit
    recovery_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.audit.passed and not self.problems

    def row(self) -> dict[str, Any]:
        """The report's row: jobs, lost, duplicated, time to recover (the worst fault)."""
        return {"scenario": self.name, "jobs": self.audit.jobs, "lost": self.audit.lost,
                "duplicated": self.audit.duplicated,
                "recovery_s": round(max(self.recovery_s), 2) if self.recovery_s else None,
                "wall_s": round(self.wall_s, 1), "passed": self.passed,
                "problems": self.problems + [f"{t}: {p}" for t, p in
                                             list(self.audit.problems.items())[:10]],
                **self.figures}


#: What "moving again" means after each service's restart: a stage succeeding (Redis,
#: PostgreSQL: the pools and the dispatcher); for Kafka, which the stages never touch, a
#: job admitted and a status event published (the bridge's consumer and the relay).
_PROGRESS = {
    "stage": "SELECT min(at) FROM task_events WHERE task_id = ANY(:ids) "
             "AND event = 'succeeded' AND at > :since",
    "admitted": "SELECT min(received_at) FROM tasks WHERE task_id = ANY(:ids) "
                "AND received_at > :since",
    "published": "SELECT min(published_at) FROM status_outbox WHERE task_id = ANY(:ids) "
                 "AND published_at > :since",
}
PROGRESS = {"redis": ("stage",), "postgres": ("stage",), "kafka": ("admitted", "published")}


def _recovery_s(stack: ChaosStack, service: str, ids: list[str], back: datetime
                ) -> dict[str, float | None]:
    """Per path ``service`` carries: seconds from ``back`` until it moved again (None:
    it never did)."""
    out: dict[str, float | None] = {}
    with stack.db.connect() as conn:
        for what in PROGRESS[service]:
            at = conn.execute(text(_PROGRESS[what]), {"ids": ids, "since": back}).scalar()
            out[what] = None if at is None else round((at - back).total_seconds(), 2)
    return out


def _await_recovery(stack: ChaosStack, service: str, ids: list[str], back: datetime,
                    timeout_s: float = 90) -> dict[str, float | None]:
    """:func:`_recovery_s` once every path moved again, or as it stands after
    ``timeout_s`` (a path that never moved stays None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            took = _recovery_s(stack, service, ids, back)
        except Exception:  # noqa: BLE001 - PostgreSQL still coming back
            took = dict.fromkeys(PROGRESS[service])
        if None not in took.values() or time.monotonic() > deadline:
            return took
        time.sleep(0.2)


def _moving(stack: ChaosStack, ids: list[str], timeout_s: float) -> bool:
    """Until a job of ``ids`` holds a live stage lease while not all of them are final
    (True: stages under way when the fault comes), or all are final already (False)."""
    def under_way() -> bool | None:
        try:
            with stack.db.connect() as conn:
                leased, final = conn.execute(text(
                    "SELECT count(*) FILTER (WHERE lease_expires_at > now()), "
                    "count(*) FILTER (WHERE status = ANY(:final)) "
                    "FROM tasks WHERE task_id = ANY(:ids)"),
                    {"ids": ids, "final": list(FINAL)}).one()
        except Exception:  # noqa: BLE001 - a service still coming back
            return None
        if final == len(ids):
            return False
        return True if leased > 0 else None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = under_way()
        if state is not None:
            return state
        time.sleep(0.05)
    raise AssertionError(f"no stage under way within {timeout_s} s")


def _unpublished(stack: ChaosStack, ids: list[str]) -> int:
    with stack.db.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM status_outbox WHERE task_id = ANY(:ids) "
            "AND published_at IS NULL"), {"ids": ids}).scalar_one())


def restart_twice(stack: ChaosStack, service: str, jobs: int = 12, *,
                  down_s: float = 1.0, timeout_s: float = 240) -> Outcome:
    """Restart ``service`` (``redis``, ``kafka``, ``postgres``) twice under a run of
    ``jobs`` jobs (at least 4); see the module docstring."""
    began = time.monotonic()
    starts = {name: proc.starts for name, proc in stack.procs.items()}
    # Before the first restart; before the second; while the service is down the second
    # time (PostgreSQL: admission rewinds; Redis: dispatch waits; Kafka: none, its
    # producers would wait too); after.
    down = 0 if service == "kafka" else max(1, jobs // 5)
    part = max(1, (jobs - 1 - down) // 2)
    batches = [part, part, down, max(1, jobs - 2 * part - down)]
    ids: list[str] = []
    backs: list[datetime] = []
    problems: list[str] = []
    paths: list[dict[str, float | None]] = []
    mid_stage = 0
    for round_, how in enumerate(HOW[service]):
        new = stack.produce(batches[round_], f"{service}{round_}")
        ids += new
        if backs:  # the first restart's recovery, measured before the next fault
            paths.append(_await_recovery(stack, service, ids, backs[-1]))
        mid_stage += _moving(stack, new, 120)
        stack.stop_service(service, **how)
        if round_ == 1 and batches[2]:
            ids += stack.produce(batches[2], f"{service}-down")
        time.sleep(down_s)
        stack.start_service(service)
        backs.append(datetime.now(timezone.utc))
    sending = time.monotonic()
    ids += stack.produce(batches[3], f"{service}-after")
    produce_s = time.monotonic() - sending
    paths.append(_await_recovery(stack, service, ids, backs[-1]))
    try:
        stack.wait_settled(ids, timeout_s)
    except AssertionError as exc:
        problems.append(str(exc))
    # The relay publishes an event a moment after the change it tells: give it that.
    try:
        stack.wait_until(lambda: _unpublished(stack, ids) == 0, 30, "the outbox drained")
    except AssertionError:
        problems.append(f"{_unpublished(stack, ids)} status events never published")
    recovery = []
    for n, took in enumerate(paths, 1):
        if None in took.values():
            problems.append(f"nothing moved after restart {n}: {took}")
        else:
            recovery.append(max(v for v in took.values() if v is not None))
    for name, proc in stack.procs.items():
        if not proc.alive:
            problems.append(f"{name} died (exit {proc.popen and proc.popen.returncode})")
        elif proc.starts != starts.get(name, proc.starts):
            problems.append(f"{name} was started again")
    audit = stack.audit(ids)
    return Outcome(f"{service}-restart-x2", audit, recovery, time.monotonic() - began,
                   problems, {"down_s": down_s, "recovery_paths": paths,
                    "produce_after_s": round(produce_s, 2),
                    "faults_mid_stage": mid_stage})


def redis_restart(stack: ChaosStack, jobs: int = 12) -> Outcome:
    return restart_twice(stack, "redis", jobs)


def kafka_restart(stack: ChaosStack, jobs: int = 12) -> Outcome:
    return restart_twice(stack, "kafka", jobs)


def postgres_restart(stack: ChaosStack, jobs: int = 12) -> Outcome:
    return restart_twice(stack, "postgres", jobs)


#: name -> scenario(stack, jobs) -> Outcome, for the runner.
SCENARIOS = {"redis-restart-x2": redis_restart, "kafka-restart-x2": kafka_restart,
             "postgres-restart-x2": postgres_restart}
#: The processes a service scenario needs running.
PROCESSES = ("bridge", *POOL_NAMES)
