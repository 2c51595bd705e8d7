"""``submit --wait``: follow a job in PostgreSQL until it is final.

On a terminal a live rich progress bar (stage, percent, elapsed) on stderr; elsewhere one
line per change of stage. The row is read every ``interval_s``; a job not admitted yet
shows as ``submitted`` (the bridge has not read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import Engine, text

from pipeline.console.output import console
from pipeline.state.status import FINAL, Status

_ROW = text("SELECT status, stage, progress FROM tasks WHERE task_id = :t")
FINAL_VALUES = frozenset(s.value for s in FINAL)


def label(row: Any) -> str:
    """What the bar says: the stage while queued or running, else the status."""
    if row is None:
        return "submitted"
    if row.status in (Status.QUEUED.value, Status.RUNNING.value) and row.stage:
        return row.stage if row.status == Status.RUNNING.value else f"{row.stage} (queued)"
    return row.status


def follow(db_engine: Engine, task_id: str, *, interval_s: float = 0.3,
           timeout_s: float | None = None,
           sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Show the job's progress until it is final; return its status (None on timeout).
    ``KeyboardInterrupt`` propagates (the job keeps running)."""
    err = console(stderr=True)
    bar = Progress(TextColumn("{task.description:<20}"), BarColumn(),
                   TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                   console=err, transient=False, disable=not err.is_terminal)
    job = bar.add_task("submitted", total=100)
    started, last = time.monotonic(), None
    with bar:
        while True:
            with db_engine.connect() as conn:
                row = conn.execute(_ROW, {"t": task_id}).first()
            now_label = label(row)
            percent = float(row.progress or 0) if row is not None else 0.0
            final = row is not None and row.status in FINAL_VALUES
            if final and row.status == Status.COMPLETED.value:
                percent = 100.0
            bar.update(job, description=now_label, completed=percent)
            if now_label != last:
                bar.refresh()  # every stage seen is drawn, however busy the machine
            if not err.is_terminal and now_label != last:
                err.print(f"{task_id}: {now_label} {percent:.0f}% "
                          f"({time.monotonic() - started:.1f}s)", markup=False)
            last = now_label
            if final:
                return str(row.status)
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return None
            sleep(interval_s)
