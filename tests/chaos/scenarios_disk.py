"""The work dir's disk fills up, then is freed: a small tmpfs is mounted over the stack's
work dir (root only), jobs start, a filler file takes every free byte for ``full_s``
seconds while more jobs come, then it is removed.

Every job must end once: completed, or failed with ``resource.disk_full`` (no other
code: a full disk must never read as a broken input or a failed encode); nothing of a
final job may stay in the work dir (no partial file, no work dir), and the audit holds
(one video per completed job, none for a failed one, one callback id each). The tmpfs is
always unmounted at the end.

    outcome = disk_full(stack, jobs=6)
    assert outcome.passed, outcome.row()
"""

from __future__ import annotations

import errno

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from tests.chaos.harness import FINAL, ChaosStack
# The runner reads a scenario module's OVERRIDES: the same stack settings as the CI module.
from tests.chaos.services_stack import OVERRIDES as STACK_OVERRIDES
from tests.chaos.scenarios_services import Outcome, _moving

OVERRIDES = dict(STACK_OVERRIDES)

#: The tmpfs over the work dir: room for a few tiny jobs at once.
SIZE = "16m"
FILLER = ".filler"
CI_JOBS = 6
LONG_JOBS = 40


@contextmanager
def tmpfs(path: Path, size: str = SIZE) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` over ``path`` (created if missing) for the block;
    unmounted afterwards whatever happened (lazily if something still holds it)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True)
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def fill(path: Path) -> int:
    """Write ``path/FILLER`` until the device refuses (ENOSPC); the bytes written."""
    written = 0
    chunk = b"\0" * (256 * 1024)
    with open(path / FILLER, "wb", buffering=0) as out:
        while True:
            try:
                written += out.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
        # The last partial chunk: take every byte left.
        for size in (4096, 1):
            while True:
                try:
                    written += out.write(b"\0" * size)
                except OSError:
                    break
    return written


def _errors(stack: ChaosStack, ids: list[str]) -> dict[str, int]:
    """``stage event code`` -> count: the failures the run's stages recorded, retried
    ones included."""
    with stack.db.connect() as conn:
        found = conn.execute(text(
            "SELECT stage || ' ' || event || ' ' || coalesce(detail->>'code', 'none'), count(*) "
            "FROM task_events WHERE task_id = ANY(:ids) "
            "AND event IN ('failed', 'retrying') GROUP BY 1"), {"ids": ids}).all()
    return {code: int(n) for code, n in found}


def left_behind(work: Path, ids: list[str]) -> list[str]:
    """What stays under ``work`` of the jobs ``ids``: their work dirs and anything in them
    (paths relative to ``work``)."""
    out: list[str] = []
    for task_id in ids:
        where = work / task_id
        if where.exists():
            out.append(task_id + "/")
            out += [str(p.relative_to(work)) for p in where.rglob("*")]
    return out


def disk_full(stack: ChaosStack, jobs: int = CI_JOBS, *, full_s: float | None = None,
              timeout_s: float = 300) -> Outcome:
    """The scenario (see the module docstring). ``full_s``: how long the disk stays full
    (default 4 s for a CI-sized run, 30 s for a long one)."""
    began = time.monotonic()
    full_s = full_s if full_s is not None else (4.0 if jobs <= CI_JOBS else 30.0)
    work = Path(stack.settings.work_dir)
    problems: list[str] = []
    figures: dict[str, object] = {"full_s": full_s, "tmpfs": SIZE}
    ids: list[str] = []
    tag = f"{int(time.time() * 1000) % 10**8}"
    with tmpfs(work):
        first = max(1, jobs // 2)
        ids += stack.produce([f"disk-{tag}-{i}" for i in range(first)], "disk")
        _moving(stack, ids, 120)
        try:  # the disk fills while a video is being written, if one comes soon
            stack.wait_stage(ids, "encode", timeout_s=20)
        except AssertionError:
            pass
        figures["filler_bytes"] = fill(work)
        stack.fault("disk full", "work dir")
        ids += stack.produce([f"disk-{tag}-{i}" for i in range(first, jobs)], "disk")
        time.sleep(full_s)
        (work / FILLER).unlink()
        stack.fault("disk freed", "work dir")
        freed = time.monotonic()
        try:
            settled = stack.wait_settled(ids, timeout_s)
            figures["settled_after_free_s"] = round(settled - freed, 2)
        except AssertionError as exc:
            problems.append(str(exc))
        left = left_behind(work, ids)
        if left:
            problems.append(f"left in the work dir: {left[:20]}")
        stray = [p.name for p in work.iterdir() if p.name not in ids]
        if stray:
            problems.append(f"other files in the work dir: {stray[:20]}")
    rows = stack.rows(ids)
    wrong = {t: (r["status"], r["error_code"]) for t, r in rows.items()
             if r["status"] in FINAL and r["status"] != "completed"
             and (r["status"], r["error_code"]) != ("failed", "resource.disk_full")}
    if wrong:
        problems.append(f"ended otherwise than completed or resource.disk_full: {wrong}")
    codes = _errors(stack, ids)
    figures["stage_errors"] = codes
    if not codes:
        problems.append("no stage met the full disk")
    expect = {t: ("completed", "failed") for t in ids}
    audit = stack.audit(ids, expect)
    recovery = [figures["settled_after_free_s"]] if "settled_after_free_s" in figures else []
    figures["failed"] = sum(1 for r in rows.values() if r["status"] == "failed")
    return Outcome("disk-full", audit, recovery,  # type: ignore[arg-type]
                   time.monotonic() - began, problems, figures)


#: name -> scenario(stack, jobs) -> Outcome, for the runner.
SCENARIOS = {"disk-full": disk_full}

