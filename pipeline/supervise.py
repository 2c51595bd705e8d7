"""Keep a set of worker processes running: ``sonic-pipeline worker --pool all``.

A Celery worker can die on its own (kombu's restore of unacknowledged messages after a
Redis restart has killed whole pools: see NOTES). The supervisor restarts a child that
exits while nobody asked it to stop, after a backoff (1 s, doubling to 30 s). A child that
dies ``max_restarts`` times within ``window_s`` is not restarted again: every other child
is stopped and :meth:`Supervisor.run` returns non-zero, so systemd or Kubernetes restarts
the whole unit. SIGTERM/SIGINT are forwarded to every child (Celery's warm shutdown:
running tasks finish) and the supervisor returns once all have exited.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: Exit code when a child died too often (distinct from Celery's own codes).
EXIT_GAVE_UP = 70

Spawn = Callable[[Sequence[str]], "subprocess.Popen[bytes]"]


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Run ``children`` (name -> argv) until a signal, restarting those that die."""

    def __init__(self, children: dict[str, list[str]], *, max_restarts: int = 5,
                 window_s: float = 300.0, spawn: Spawn | None = None,
                 poll_s: float = 0.5) -> None:
        self.children = [Child(name, list(argv)) for name, argv in children.items()]
        self.max_restarts, self.window_s, self.poll_s = max_restarts, window_s, poll_s
        self.spawn: Spawn = spawn or (lambda argv: subprocess.Popen(list(argv)))
        self.stopping = False
        self.signum: int | None = None

    def install(self) -> None:
        """Forward SIGTERM and SIGINT to the children (main thread only)."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stop(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Ask every running child to stop with ``signum``; none is restarted after this."""
        self.stopping, self.signum = True, signum
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.send_signal(signum)

    def run(self) -> int:
        """Start every child and supervise until they have all exited.

        Returns 0 after a requested stop where every child exited 0, the highest child
        exit code otherwise, or :data:`EXIT_GAVE_UP` when a child died too often."""
        for child in self.children:
            child.proc = self.spawn(child.argv)
        gave_up = False
        while True:
            now = time.monotonic()
            for child in self.children:
                if not self.stopping:
                    gave_up = self._check(child, now) or gave_up
            if gave_up and not self.stopping:
                self.stop(signal.SIGTERM)
            if self.stopping and all(c.proc is None or c.proc.poll() is not None
                                     for c in self.children):
                break
            time.sleep(self.poll_s)
        codes = [c.proc.returncode for c in self.children if c.proc is not None]
        if gave_up:
            return EXIT_GAVE_UP
        return max((abs(code) for code in codes), default=0)

    def _check(self, child: Child, now: float) -> bool:
        """Restart ``child`` when it is due; True when it died too often."""
        if child.restart_at is not None:
            if now >= child.restart_at:
                log.warning("restarting worker pool %s", child.name)
                child.proc, child.restart_at = self.spawn(child.argv), None
            return False
        assert child.proc is not None
        code = child.proc.poll()
        if code is None:
            return False
        child.deaths.append(now)
        while child.deaths and child.deaths[0] < now - self.window_s:
            child.deaths.popleft()
        if len(child.deaths) > self.max_restarts:
            log.error("worker pool %s died %d times in %.0f s (last exit %s); giving up",
                      child.name, len(child.deaths), self.window_s, code)
            return True
        delay = min(30.0, 2.0 ** (len(child.deaths) - 1))
        log.error("worker pool %s exited with %s; restarting it in %.0f s", child.name, code,
                  delay)
        child.restart_at = now + delay
        return False
