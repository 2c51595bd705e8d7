"""Housekeeping: remove the work dirs no job needs any more, so the disk does not fill.

A job's work dir (``<work_dir>/<task_id>``) holds its inputs, audio, frames and video
while the job runs. It goes in one of two ways:

- at once, by :func:`remove_workdir`: the upload stage calls it once the video and poster
  are stored (the callback stage reads nothing from the work dir), and the stage runner
  when a job fails for good;
- by :func:`sweep_workdirs` (``sonic-pipeline housekeeping``, run periodically): the dirs
  of jobs that are final, or unknown to the database, and untouched (nothing in them
  modified) for ``SONIC_WORKDIR_RETENTION_S``. That catches what a crash between a job's
  end and its clean-up left, the empty dir a callback stage makes, and rows deleted by hand.

What a sweep never removes: the dir of a job that is not final or holds a live lease;
anything that is, or contains, the state dir, the object store or an input root (a work
dir set to a shared parent by mistake); an unknown job's dir whose content is not
recognisably a work dir (:data:`WORKDIR_NAMES`); anything outside the work dir. A symlink
in the work dir is removed as a link, never followed, and removing a tree never follows
the links inside it (``shutil.rmtree`` works through directory descriptors on Linux).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine, bindparam, text

from pipeline.job_ids import is_task_id
from pipeline.settings import Settings
from pipeline.state.status import Status

log = logging.getLogger(__name__)

#: Top-level names a stage writes in a work dir (``pipeline/stages/artifacts.py``); an
#: unknown job's dir holding anything else is kept (it may not be a work dir at all).
WORKDIR_NAMES = frozenset({
    "inputs", "audio.wav", "audio.flac", "face.png", "prepared.json", "render",
    "render.json", "video.mp4", "poster.jpg", "encode.json",
})
#: Temporary files of ``pipeline.atomic.atomic_write`` (``.<name>.<random>.partial``).
_PARTIAL = re.compile(r"^\..+\.partial$")
_FINAL = tuple(s.value for s in Status if s.final)
#: Task ids asked about per query.
_CHUNK = 1000

_STATES = text("""
    SELECT task_id, status IN :final AS final,
           coalesce(lease_owner IS NOT NULL AND lease_expires_at > now(), false) AS leased
      FROM tasks WHERE task_id IN :ids
""").bindparams(bindparam("final", expanding=True), bindparam("ids", expanding=True))


def remove_workdir(settings: Settings, task_id: str) -> bool:
    """Remove ``<work_dir>/<task_id>`` now; True when something was removed.

    For a job that is done with its work dir (uploaded, or failed for good). Never
    raises: a missing dir is False, an id that cannot name a work dir is refused and an
    ``OSError`` is logged (the sweep tries again later). A symlink is unlinked, never
    followed.
    """
    if not is_task_id(task_id):
        log.warning("not removing a work dir for invalid task id %r", task_id)
        return False
    return _remove(Path(settings.work_dir) / task_id)


def sweep_workdirs(settings: Settings, db_engine: Engine, older_than_s: float | None = None,
                   *, dry_run: bool = False, now: float | None = None) -> list[Path]:
    """Remove the work dirs that no job needs (see the module docstring); return them.

    ``older_than_s`` defaults to ``settings.workdir_retention_s``: a dir is removed only
    when nothing in it was modified for that long. ``dry_run`` returns what would go
    and removes nothing. Raises SQLAlchemy's errors when the database cannot be read
    (nothing is removed then).
    """
    root = Path(settings.work_dir)
    retention = settings.workdir_retention_s if older_than_s is None else older_than_s
    cutoff = (time.time() if now is None else now) - retention
    entries = _entries(root)
    if not entries:
        return []
    states = _task_states(db_engine, list(entries))
    protected = _protected(settings)
    removed: list[Path] = []
    for name, path in sorted(entries.items()):
        final, leased = states.get(name, (None, False))
        if final is False or leased:
            continue  # a job still running (or a final one finishing its callback)
        if any(_within(other, path) for other in protected):
            log.warning("work dir sweep: %s holds %s; not removed", path,
                        next(p for p in protected if _within(p, path)))
            continue
        if final is None and not _looks_like_workdir(path):
            log.warning("work dir sweep: %s names no known job and is not a work dir; kept",
                        path)
            continue
        if _newest_mtime(path) > cutoff:
            continue
        if dry_run or _remove(path):
            removed.append(path)
    if removed:
        log.info("work dir sweep: %s %d dir(s) under %s", "would remove" if dry_run
                 else "removed", len(removed), root)
    return removed


def _entries(root: Path) -> dict[str, Path]:
    """Directories and symlinks directly in ``root`` whose names are task ids."""
    found: dict[str, Path] = {}
    try:
        with os.scandir(root) as scan:
            for entry in scan:
                if not is_task_id(entry.name):
                    continue
                if entry.is_symlink() or entry.is_dir(follow_symlinks=False):
                    found[entry.name] = root / entry.name
    except FileNotFoundError:
        pass
    return found


def _task_states(db_engine: Engine, ids: list[str]) -> dict[str, tuple[bool, bool]]:
    """``{task_id: (final, leased)}`` for the ids that have a row."""
    states: dict[str, tuple[bool, bool]] = {}
    with db_engine.connect() as conn:
        for start in range(0, len(ids), _CHUNK):
            rows = conn.execute(_STATES, {"final": list(_FINAL),
                                          "ids": ids[start:start + _CHUNK]})
            for task_id, final, leased in rows:
                states[task_id] = (bool(final), bool(leased))
    return states


def _protected(settings: Settings) -> list[Path]:
    paths: Iterable[Path | None] = (settings.state_dir, settings.storage_dir,
                                    *settings.input_roots)
    return [Path(os.path.abspath(p)) for p in paths if p is not None]


def _within(inner: Path, outer: Path) -> bool:
    """True when ``inner`` is ``outer`` or lies under it (lexically, no link followed)."""
    return inner == outer or outer in inner.parents


def _looks_like_workdir(path: Path) -> bool:
    if path.is_symlink():
        return True  # only the link goes
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return all(name in WORKDIR_NAMES or _PARTIAL.match(name) for name in names)


def _newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and everything under it (links not
    followed); a file that vanishes meanwhile is skipped."""
    try:
        newest = os.lstat(path).st_mtime
    except FileNotFoundError:
        return 0.0
    if path.is_symlink():
        return newest
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in (*dirs, *files):
            try:
                newest = max(newest, os.lstat(os.path.join(top, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _remove(path: Path) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)  # a symlink (or a stray file): the link goes, never its target
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("cannot remove work dir %s: %s", path, exc)
        return False
    return True
