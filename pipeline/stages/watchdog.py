"""The stage's watchdog: heart-beats its lease and stops the stage's thread when it must.

One daemon thread per running stage. Every ``heartbeat_interval_s`` it extends the lease
(and writes progress); it stops the work at once when

- the lease is lost (expired and taken over) -> :class:`LeaseLost` is raised in the
  stage's thread;
- the task was cancelled -> :class:`CancelledWhileRunning`;
- the stage's time budget ran out -> :class:`BudgetExceeded`;
- the task's deadline passed -> :class:`DeadlinePassed`.

These are raised *in the stage's thread* (CPython's ``PyThreadState_SetAsyncExc``): the
work stops at the next Python instruction, whether or not the engine polls
``should_stop``. Code blocked inside one C call (a single CUDA kernel, ``waitpid``) sees
it when that call returns. They derive from :class:`BaseException`, so an engine's
``except Exception`` cannot swallow them; the runner turns them into outcomes.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.faults import describe, is_database_error

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """The stage must stop now (raised in its thread by the watchdog, or by should_stop)."""


class LeaseLost(Interrupted):
    """The lease expired and another worker took the stage over."""


class CancelledWhileRunning(LeaseLost):
    """The task was cancelled while the stage ran (its lease is gone with it)."""


class BudgetExceeded(Interrupted):
    """The stage ran past its time budget."""


class DeadlinePassed(Interrupted):
    """The task's deadline passed while the stage ran."""


#: What one heartbeat reports: None (beat written or missed), or the reason to stop.
Beat = Callable[[], "type[Interrupted] | None"]


def raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> bool:
    """Schedule ``exc_type`` to be raised in thread ``thread_id``; False if no such thread."""
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                                      ctypes.py_object(exc_type))
    if done > 1:  # never expected: undo rather than hit several threads
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1


def _clear(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class Watchdog:
    """Beats every ``interval_s`` and interrupts the armed thread when it must stop.

    ``beat()`` writes one heartbeat and returns None or the :class:`Interrupted` subclass
    to raise; ``deadline()`` returns the monotonic time past which the stage must stop
    (None: no budget), read at every tick so a stage may set its budget once it knows it.
    """

    def __init__(self, beat: Beat, interval_s: float,
                 deadline: Callable[[], float | None] = lambda: None) -> None:
        self._beat = beat
        self._interval = float(interval_s)
        self._deadline = deadline
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._target: int | None = None
        #: Why the stage was told to stop (set once, read by the runner and should_stop).
        self.reason: type[Interrupted] | None = None
        self._thread = threading.Thread(target=self._run, name="stage-watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 5)

    @contextmanager
    def armed(self) -> Iterator[None]:
        """While inside, the calling thread may be interrupted; never after it leaves."""
        with self._lock:
            self._target = threading.get_ident()
        late: Interrupted | None = None
        try:
            yield
        finally:
            while True:  # an exception raised while disarming: disarm again, raise it after
                try:
                    self._disarm()
                    break
                except Interrupted as caught:
                    late = caught
        if late is not None:
            raise late

    def _disarm(self) -> None:
        with self._lock:
            target, self._target = self._target, None
            if target is not None:
                _clear(target)  # an exception scheduled but not yet raised

    def _next_wait(self) -> float:
        deadline = self._deadline()
        if deadline is None or self.reason is not None:
            return self._interval
        return max(0.0, min(self._interval, deadline - time.monotonic()))

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self._next_wait()):
            now = time.monotonic()
            deadline = self._deadline()
            if self.reason is None and deadline is not None and now >= deadline:
                self._fire(BudgetExceeded)
            if now - last_beat < self._interval - 0.01:
                continue
            last_beat = now
            try:
                verdict = self._beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is tried again next tick
                log.warning("heartbeat failed, tried again in %s s: %s", self._interval,
                            describe(exc), exc_info=not is_database_error(exc))
                verdict = None
            if verdict is not None or self.reason is not None:
                # Insist at every beat while the stage still runs (code that swallowed it).
                self._fire(verdict or self.reason)

    def _fire(self, reason: type[Interrupted]) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason
            if self._target is not None:
                raise_in_thread(self._target, self.reason)
