"""The worker supervisor with real child processes: restarts, gives up, forwards signals."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from pipeline.supervise import EXIT_GAVE_UP, Supervisor


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


#: A child that runs until SIGTERM, then exits 0 (a Celery warm shutdown).
PATIENT = py("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
             "while True: time.sleep(0.05)")


def counting(path: Path, code: str) -> list[str]:
    """A child that appends a line to ``path`` when it starts, then runs ``code``."""
    return py(f"open({str(path)!r}, 'a').write('start\\n')\n{code}")


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    out: list[int] = []
    thread = threading.Thread(target=lambda: out.append(sup.run()), daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_child_that_dies_is_restarted_and_the_others_keep_running(tmp_path: Path) -> None:
    starts = tmp_path / "crashy"
    # Dies at once the first time, then stays up like a healthy pool.
    crashy = counting(starts, "import os, signal, sys, time\n"
                      "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                      f"if open({str(starts)!r}).read().count('start') == 1: os._exit(1)\n"
                      "while True: time.sleep(0.05)")
    sup = Supervisor({"cpu": crashy, "gpu": PATIENT}, poll_s=0.05)
    thread, out = run_in_thread(sup)
    wait_for(lambda: starts.exists() and starts.read_text().count("start") == 2)
    gpu = sup.children[1].proc
    assert gpu is not None and gpu.poll() is None  # untouched by the other pool's crash
    sup.stop(signal.SIGTERM)
    thread.join(timeout=10)
    assert out == [0]


def test_a_child_that_keeps_dying_makes_the_supervisor_exit_non_zero(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    sup = Supervisor({"io": counting(starts, "import os; os._exit(3)"), "gpu": PATIENT},
                     max_restarts=2, window_s=60, poll_s=0.05)
    # No backoff in this test: restarts at once.
    original = sup._check

    def no_backoff(child, now):
        gave_up = original(child, now)
        if child.restart_at is not None:
            child.restart_at = now
        return gave_up

    sup._check = no_backoff  # type: ignore[method-assign]
    thread, out = run_in_thread(sup)
    thread.join(timeout=20)
    assert out == [EXIT_GAVE_UP]
    assert starts.read_text().count("start") == 3  # first start + 2 restarts
    gpu = sup.children[1].proc
    assert gpu is not None and gpu.returncode == 0  # the healthy pool was stopped cleanly


def test_signals_are_forwarded_and_nothing_restarts_after_a_stop(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    ready = py("import signal, sys, time\n"
               "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
               f"open({str(starts)!r}, 'a').write('start\\n')\n"
               "while True: time.sleep(0.05)")
    sup = Supervisor({"a": ready, "b": ready}, poll_s=0.05)
    thread, out = run_in_thread(sup)
    wait_for(lambda: all(c.proc is not None for c in sup.children))
    wait_for(lambda: starts.exists() and starts.read_text().count("start") == 2)
    sup.stop(signal.SIGTERM)
    thread.join(timeout=10)
    assert out == [0]
    assert starts.read_text().count("start") == 2  # one start each, no restart
    assert all(c.proc is not None and c.proc.returncode == 0 for c in sup.children)
