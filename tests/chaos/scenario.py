"""A fault scenario, one run of it on a :class:`~tests.chaos.harness.ChaosStack`, and its
outcome.

A scenario module is ``tests/chaos/scenarios_<area>.py`` with a list ``SCENARIOS`` of
:class:`Scenario`; the runner (``python -m tests.chaos``) and the CI tests find them by that
name. A scenario's ``inject(run)`` produces its jobs (``run.produce``) and injects its
faults through the stack (every fault logged with its time); :func:`execute` then waits
until every job settles and audits them.

    outcome = execute(stack, SCENARIO, jobs=6, seed=1)
    assert outcome.passed, outcome.describe()
"""

from __future__ import annotations

import importlib
import pkgutil
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.chaos.audit import Audit
from tests.chaos.harness import ChaosStack


@dataclass(frozen=True)
class Scenario:
    """``inject(run)``: produce the jobs and inject the faults (returns when the faults
    are over; the jobs may still be moving). ``ci_jobs`` / ``long_jobs``: the run's size
    in the normal suite and under ``make chaos``; ``timeout_s``: how long the jobs may
    take to settle after ``inject`` returned."""

    name: str
    inject: Callable[[Run], None]
    ci_jobs: int
    long_jobs: int
    doc: str = ""
    timeout_s: float = 240.0


@dataclass
class Run:
    """One execution: the stack, the seeded RNG, the jobs produced and what each may end
    as (default ``completed``), and notes for the report."""

    stack: ChaosStack
    scenario: str
    jobs: int
    seed: int
    rng: random.Random
    ids: list[str] = field(default_factory=list)
    expect: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    began: float = field(default_factory=time.monotonic)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def produce(self, count: int, expect: tuple[str, ...] | None = None,
                **extra: Any) -> list[str]:
        """Produce ``count`` jobs (message fields ``extra``); returns their ids."""
        first = len(self.ids)
        names = [f"{self.scenario}-{self.tag}-{first + i}" for i in range(count)]
        ids = self.stack.produce(names, self.scenario, **extra)
        self.ids.extend(ids)
        if expect is not None:
            self.expect.update({t: expect for t in ids})
        return ids

    def settled(self) -> bool:
        return self.stack.settled(self.ids)

    def sleep(self, low: float, high: float) -> float:
        """Sleep a seeded time in [low, high]; returns it."""
        seconds = self.rng.uniform(low, high)
        time.sleep(seconds)
        return seconds


@dataclass
class Outcome:
    """What one execution showed. ``recover_s``: from the end of the last fault (the last
    kill, restart or resume) to every job settled (the jobs left then included);
    ``notes["longest_stall_s"]``: the longest time no stage of the run succeeded."""

    scenario: str
    jobs: int
    seed: int
    audit: Audit
    faults: int
    recover_s: float | None
    wall_s: float
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    fault_log: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and self.audit.passed

    def row(self) -> dict[str, Any]:
        """The report's row (see :class:`Entry`)."""
        problems = ([self.error] if self.error else []) + [
            f"{t}: {p}" for t, p in list(self.audit.problems.items())[:10]]
        return {"scenario": self.scenario, "jobs": self.jobs, "lost": self.audit.lost,
                "duplicated": self.audit.duplicated,
                "recovery_s": None if self.recover_s is None else round(self.recover_s, 2),
                "wall_s": round(self.wall_s, 1), "passed": self.passed,
                "stall_s": self.notes.get("longest_stall_s"), "problems": problems, "faults": self.faults, "seed": self.seed,
                "audit": self.audit.as_dict(), "notes": self.notes,
                "fault_log": self.fault_log}

    def describe(self) -> str:
        return (f"{self.scenario} (seed {self.seed}): {self.audit.summary()}; error: "
                f"{self.error}; notes {self.notes}; faults {self.fault_log}")


def longest_stall_s(stack: ChaosStack, ids: list[str]) -> float | None:
    """The longest time between two consecutive stage successes of ``ids`` (how long
    the run stood still at worst), seconds; None with fewer than two."""
    with stack.db.connect() as conn:
        gap = conn.execute(text("""
            SELECT max(extract(epoch FROM at - previous)) FROM (
                SELECT at, lag(at) OVER (ORDER BY at) AS previous FROM task_events
                WHERE task_id = ANY(:ids) AND event = 'succeeded') steps"""),
            {"ids": ids}).scalar()
    return None if gap is None else round(float(gap), 2)


def execute(stack: ChaosStack, scenario: Scenario, jobs: int, seed: int) -> Outcome:
    """Run ``scenario`` with ``jobs`` jobs on ``stack`` (every process brought back first
    and after), wait until its jobs settle, audit them."""
    stack.ensure_running()
    rng = random.Random(f"{seed}:{scenario.name}")
    stack.rng = rng
    first_fault = len(stack.faults)
    run = Run(stack, scenario.name, jobs, seed, rng)
    error: str | None = None
    settled_at: float | None = None
    try:
        scenario.inject(run)
        settled_at = stack.wait_settled(run.ids, scenario.timeout_s)
    except Exception as exc:  # noqa: BLE001 - reported with the audit, never hidden
        error = f"{type(exc).__name__}: {exc}"[:3000]
    faults = stack.faults[first_fault:]
    try:
        stack.ensure_running()
        result = stack.audit(run.ids, run.expect)
    except Exception as exc:  # noqa: BLE001
        result = Audit(jobs=len(run.ids), lost=len(run.ids))
        error = (error or "") + f"; audit failed: {type(exc).__name__}: {exc}"
    deaths = stack.deaths(run.began)
    if deaths:  # exits nobody asked for, restarted as systemd would
        run.notes["restarted_after_dying"] = deaths
    try:
        run.notes["longest_stall_s"] = longest_stall_s(stack, run.ids)
    except Exception:  # noqa: BLE001 - a figure only
        pass
    last = max((f.at for f in faults), default=None)
    recover = settled_at - last if settled_at is not None and last is not None else None
    log = [f"{f.at - run.began:7.2f}s {f.what} {f.target}" for f in faults]
    kills = sum(1 for f in faults if f.what not in ("start", "SIGCONT"))
    return Outcome(scenario.name, len(run.ids), seed, result, kills, recover,
                   time.monotonic() - run.began, error, run.notes, log)


@dataclass(frozen=True)
class Entry:
    """A scenario as the runner sees it, whatever module shape it comes from:
    ``run(stack, jobs, seed)`` returns an outcome with ``passed`` and ``row()`` (the
    report's row: ``scenario``, ``jobs``, ``lost``, ``duplicated``, ``recovery_s``,
    ``wall_s``, ``passed``, ``problems``...); ``overrides``: settings of its stack."""

    name: str
    run: Callable[[ChaosStack, int, int], Any]
    ci_jobs: int
    long_jobs: int
    overrides: dict[str, Any] = field(default_factory=dict)


def entries() -> dict[str, Entry]:
    """Every scenario of every ``tests/chaos/scenarios_*.py`` module, by name. A module's
    ``SCENARIOS`` is a list of :class:`Scenario`, or a dict of name -> ``fn(stack, jobs)``
    (then its ``CI_JOBS`` / ``LONG_JOBS`` give the sizes, 5 and 40 by default, and its
    ``OVERRIDES`` the stack's settings)."""
    found: dict[str, Entry] = {}
    here = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda i: i.name):
        if not info.name.startswith("scenarios_"):
            continue
        module = importlib.import_module(f"tests.chaos.{info.name}")
        scenarios = getattr(module, "SCENARIOS", [])
        overrides = dict(getattr(module, "OVERRIDES", {}))
        if isinstance(scenarios, dict):
            for name, fn in scenarios.items():
                found[name] = Entry(name, lambda stack, jobs, seed, fn=fn: fn(stack, jobs),
                                    int(getattr(module, "CI_JOBS", 5)),
                                    int(getattr(module, "LONG_JOBS", 40)), overrides)
            continue
        for scenario in scenarios:
            found[scenario.name] = Entry(
                scenario.name, lambda stack, jobs, seed, sc=scenario: execute(
                    stack, sc, jobs, seed), scenario.ci_jobs, scenario.long_jobs, overrides)
    return found
