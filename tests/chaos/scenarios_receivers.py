"""Callback receiver faults: one receiver hangs (accepts, reads, never answers), one
trickles its answer a byte at a time, one answers 500; each for ``fault_s`` seconds from
its first request (a minute in the long run, a few seconds in CI), then answers 200.
Beside them a healthy receiver (the stack's own) gets its callbacks as usual.

Every job must end with exactly one callback id delivered (the retries of a callback
reuse its id), its status the row's; the healthy receiver's jobs must be delivered at
the first attempt. Figures: per faulty receiver, the attempts its callbacks took and the
seconds from its recovery to its last callback delivered; for the healthy one, the worst
lag from a job's upload to its callback delivered.

    outcome = receivers(stack, jobs=8)
    assert outcome.passed, outcome.row()
"""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import text

from tests.chaos.audit import audit as audit_of
from tests.chaos.harness import SECRET, ChaosStack
from tests.chaos.scenarios_services import Outcome
from tests.chaos.services_stack import OVERRIDES as STACK_OVERRIDES
from tests.support.receiver import CallbackReceiver, Received, SignedHandler

MODES = ("hang", "trickle", "error")
#: Seconds a trickling receiver waits between two bytes of its answer.
TRICKLE_S = 0.2
#: The settings of the stack (short attempt deadline, a breaker that opens after a few
#: failures for a short while, so a faulty receiver costs seconds).
OVERRIDES = dict(STACK_OVERRIDES)
CI_JOBS = 8
LONG_JOBS = 40


class _Handler(SignedHandler):
    def do_POST(self) -> None:  # noqa: N802
        owner: FaultyReceiver = self.owner()
        faulty = owner.arrived(self.read_signed())
        try:
            if not faulty:
                self._answer(200)
                owner.answered()
            elif owner.mode == "error":
                self._answer(500)
            elif owner.mode == "hang":
                owner.stopping.wait(owner.fault_s + 5)
                self.close_connection = True
            else:
                self._trickle(owner)
        except OSError:
            pass  # the client gave up: what a faulty receiver is for

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _trickle(self, owner: FaultyReceiver) -> None:
        """``HTTP/1.1 200 OK`` and then header bytes, one per ``TRICKLE_S``, never done."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.wfile.flush()
        end = time.monotonic() + owner.fault_s + 5
        while time.monotonic() < end and not owner.stopping.wait(TRICKLE_S):
            self.wfile.write(b"x")
            self.wfile.flush()
        self.close_connection = True


class FaultyReceiver(CallbackReceiver):
    """A signed-callback receiver that misbehaves (``mode``: hang, trickle, error) for
    ``fault_s`` seconds from its first request, then answers 200. ``requests`` holds every
    request (verified or not); ``recovered_at`` / ``delivered_at`` are monotonic times."""

    def __init__(self, secret: str, mode: str, fault_s: float) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        super().__init__(secret)
        self.httpd.RequestHandlerClass = _Handler
        self.mode, self.fault_s = mode, fault_s
        self.stopping = threading.Event()
        self.began: float | None = None
        self.delivered_at: list[float] = []

    @property
    def recovered_at(self) -> float | None:
        return None if self.began is None else self.began + self.fault_s

    def arrived(self, received: Received) -> bool:
        """Keep the request; whether it falls in the fault window."""
        with self._lock:
            self.requests.append(received)
            now = time.monotonic()
            if self.began is None:
                self.began = now
            return now < self.began + self.fault_s

    def answered(self) -> None:
        with self._lock:
            self.delivered_at.append(time.monotonic())

    def stop(self) -> None:
        self.stopping.set()
        super().stop()


def _callback_rows(stack: ChaosStack, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per task: callback attempts and the lag from its upload to its callback done."""
    with stack.db.connect() as conn:
        rows = conn.execute(text("""
            SELECT t.task_id, t.callback_attempts, t.callback_status,
                   extract(epoch FROM max(e.at) FILTER (WHERE e.stage = 'callback'))
                 - extract(epoch FROM max(e.at) FILTER (WHERE e.stage = 'upload')) AS lag_s
            FROM tasks t JOIN task_events e ON e.task_id = t.task_id
            WHERE t.task_id = ANY(:ids) AND e.event = 'succeeded'
            GROUP BY t.task_id, t.callback_attempts, t.callback_status"""),
            {"ids": ids}).mappings().all()
    return {r["task_id"]: dict(r) for r in rows}


def receivers(stack: ChaosStack, jobs: int = CI_JOBS, *, fault_s: float | None = None,
              timeout_s: float = 300) -> Outcome:
    """The scenario (see the module docstring): ``jobs`` jobs, a quarter (at least one)
    per faulty receiver, the rest to the healthy one; ``fault_s``: each fault's length
    (default 4 s for a CI-sized run, 60 s for a long one)."""
    began = time.monotonic()
    fault_s = fault_s if fault_s is not None else (4.0 if jobs <= CI_JOBS else 60.0)
    faulty = {mode: FaultyReceiver(SECRET, mode, fault_s).start() for mode in MODES}
    # Room in the io pool: a hanging receiver holds a worker process for an attempt's
    # deadline (until its breaker opens); the healthy receiver's callbacks need another.
    stack.start_process("io-b", pool="io", env={"SONIC_WORKER_CONCURRENCY": "2"})
    each = max(1, jobs // 4)
    healthy_n = max(1, jobs - each * len(MODES))
    ids: dict[str, list[str]] = {mode: [] for mode in (*MODES, "healthy")}
    problems: list[str] = []
    try:
        tag = f"{int(time.time() * 1000) % 10**8}"
        # Interleaved, so the healthy receiver's jobs run while the others misbehave.
        for i in range(max(each, healthy_n)):
            for mode in (*MODES, "healthy"):
                if len(ids[mode]) >= (healthy_n if mode == "healthy" else each):
                    continue
                task_id = f"recv-{mode}-{tag}-{i}"
                url = (stack.receiver if mode == "healthy" else faulty[mode]).url(
                    f"/hook/{mode}")
                stack.produce([task_id], mode, callback_url=url)
                ids[mode].append(task_id)
        every = [t for group in ids.values() for t in group]
        try:
            stack.wait_settled(every, timeout_s)
        except AssertionError as exc:
            problems.append(str(exc))
        requests = list(stack.receiver.requests)
        for receiver in faulty.values():
            requests += receiver.requests
        audit = audit_of(stack.db, every, stack.objects(), requests)
        rows = _callback_rows(stack, every)
        figures: dict[str, Any] = {"fault_s": fault_s}
        recovery: list[float] = []
        for mode, receiver in faulty.items():
            attempts = [rows[t]["callback_attempts"] for t in ids[mode] if t in rows]
            late = (max(receiver.delivered_at) - receiver.recovered_at
                    if receiver.delivered_at and receiver.recovered_at else None)
            figures[mode] = {"jobs": len(ids[mode]), "requests": len(receiver.requests),
                             "attempts_max": max(attempts, default=None),
                             "delivered_after_recovery_s": None if late is None
                             else round(late, 2)}
            if late is not None:
                recovery.append(max(0.0, late))
            if not any(a and a > 1 for a in attempts):
                problems.append(f"the {mode} receiver's fault was never met (attempts "
                                f"{attempts})")
        lags = [rows[t]["lag_s"] for t in ids["healthy"] if t in rows and rows[t]["lag_s"]]
        figures["healthy"] = {"jobs": len(ids["healthy"]),
                              "lag_max_s": round(float(max(lags)), 2) if lags else None}
        again = [t for t in ids["healthy"] if t in rows and rows[t]["callback_attempts"] != 1]
        if again:
            problems.append(f"the healthy receiver's callbacks took more than one attempt: "
                            f"{again}")
    finally:
        for receiver in faulty.values():
            receiver.stop()
        if "io-b" in stack.procs and stack.procs["io-b"].alive:
            stack.kill("io-b")
    return Outcome("callback-receivers", audit, recovery, time.monotonic() - began,
                   problems, figures)


#: name -> scenario(stack, jobs) -> Outcome, for the runner.
SCENARIOS = {"callback-receivers": receivers}
