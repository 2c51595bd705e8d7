"""Imports run one way: entry points on top, bridge and tasks over pipeline, and inside
pipeline the media/storage/state/inputs modules at the bottom.

Every ``import`` in ``pipeline/``, ``bridge/``, ``tasks/``, ``ops/`` and ``migrations/`` is
read with :mod:`ast` (function-level and ``TYPE_CHECKING`` imports included) and checked
against this table. A module belongs to the group of its longest matching prefix; it may
import its own group and the groups listed for it, nothing else of ours.

    group     modules                                         may import
    --------  ----------------------------------------------  ---------------------------
    entry     pipeline.cli, pipeline.commands, bridge.__main__  everything
              ops, migrations, pipeline.console (the verbs)
              pipeline.http (the HTTP service)
    bridge    bridge (but bridge.__main__)                    base, bottom, domain
    tasks     tasks                                           base, bottom, domain,
                                                              stages, app
    app       pipeline (the package), pipeline.celery,        base, bottom, domain,
              pipeline.worker_hooks                           stages
    stages    pipeline.stages                                 base, bottom, domain
    domain    pipeline.engines, pipeline.jobs,                base, bottom
              pipeline.webhooks, pipeline.housekeeping,
              pipeline.reconcile, pipeline.epoch,
              pipeline.supervise, pipeline.chains,
              pipeline.celery_config, pipeline.celery_pin,
              pipeline.scheduler, pipeline.status
    inputs    pipeline.inputs                                 base, storage
    media     pipeline.media                                  base
    storage   pipeline.storage                                base
    state     pipeline.state                                  base
    base      pipeline.errors, pipeline.settings,             (nothing of ours)
              pipeline.atomic, pipeline.job_ids,
              pipeline.job_limits, pipeline.metrics,
              pipeline.faults, pipeline.per_process

``bottom`` is inputs, media, storage and state. So the bridge never imports a stage,
the Celery app or a task module (nor torch through them); the CLI is an entry point
inside the ``pipeline`` package, and no module below it imports it; tests may import
anything and are not checked.

Run as a script (``make lint``) it prints the violations and exits 1 when there are any.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "bridge", "tasks", "ops", "migrations")
BOTTOM = ("inputs", "media", "storage", "state")

#: Module prefix -> group (the longest matching prefix wins). ``pipeline`` itself (the
#: package's ``__init__``) is matched exactly: a new module under pipeline/ gets no group
#: until it is placed here.
GROUPS: dict[str, str] = {
    "pipeline.cli": "entry", "pipeline.commands": "entry", "bridge.__main__": "entry",
    "pipeline.console": "entry",
    "pipeline.http": "entry",
    "ops": "entry", "migrations": "entry",
    "bridge": "bridge",
    "tasks": "tasks",
    "pipeline.celery": "app", "pipeline.worker_hooks": "app",
    "pipeline.stages": "stages",
    "pipeline.engines": "domain", "pipeline.jobs": "domain", "pipeline.webhooks": "domain",
    "pipeline.housekeeping": "domain", "pipeline.reconcile": "domain",
    "pipeline.epoch": "domain", "pipeline.supervise": "domain", "pipeline.chains": "domain",
    "pipeline.celery_config": "domain", "pipeline.celery_pin": "domain",
    "pipeline.scheduler": "domain",
    "pipeline.status": "domain",
    "pipeline.inputs": "inputs", "pipeline.media": "media", "pipeline.storage": "storage",
    "pipeline.state": "state",
    "pipeline.errors": "base", "pipeline.settings": "base", "pipeline.atomic": "base", "pipeline.per_process": "base",
    "pipeline.job_ids": "base", "pipeline.job_limits": "base", "pipeline.metrics": "base",
    "pipeline.faults": "base",
}

#: Group -> the other groups it may import (its own group is always allowed).
ALLOWED: dict[str, frozenset[str]] = {
    "entry": frozenset({"bridge", "tasks", "app", "stages", "domain", *BOTTOM, "base"}),
    "bridge": frozenset({"domain", *BOTTOM, "base"}),
    "tasks": frozenset({"app", "stages", "domain", *BOTTOM, "base"}),
    "app": frozenset({"stages", "domain", *BOTTOM, "base"}),
    "stages": frozenset({"domain", *BOTTOM, "base"}),
    "domain": frozenset({*BOTTOM, "base"}),
    "inputs": frozenset({"storage", "base"}),
    "media": frozenset({"base"}),
    "storage": frozenset({"base"}),
    "state": frozenset({"base"}),
    "base": frozenset(),
}


def group_of(module: str) -> str | None:
    """The group of ``module`` (a dotted name of ours), None when it is not ours."""
    if module == "pipeline":
        return "app"
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = GROUPS.get(".".join(parts[:end]))
        if found:
            return found
    return None


def module_name(path: Path, root: Path = ROOT) -> str:
    """``pipeline/state/db.py`` -> ``pipeline.state.db``; a package's ``__init__`` -> its name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str, root: Path) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, imported module) for every import in ``path``, at any depth, by line.

    ``from a.b import c`` counts as ``a.b.c`` when that is a module of ours, else ``a.b``.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((node.lineno, full if _is_module(full, root) else base))
    return sorted(found)


def sources(root: Path = ROOT) -> list[Path]:
    return sorted(p for package in PACKAGES for p in (root / package).rglob("*.py"))


def violations(root: Path = ROOT) -> list[str]:
    """One line per import against the table: ``file:line: a (group) imports b (group)``."""
    out = []
    for path in sources(root):
        importer = module_name(path, root)
        mine = group_of(importer)
        if mine is None:
            out.append(f"{path.relative_to(root)}: {importer} has no group: place it in "
                       "GROUPS and the table in tests/test_layers.py's docstring")
            continue
        for line, target in imports(path, root):
            theirs = group_of(target)
            if theirs is None or theirs == mine or theirs in ALLOWED[mine]:
                continue
            out.append(f"{path.relative_to(root)}:{line}: {importer} ({mine}) imports "
                       f"{target} ({theirs}); {mine} may import "
                       f"{', '.join(sorted(ALLOWED[mine])) or 'nothing of ours'}")
    return out


def test_every_import_follows_the_layers() -> None:
    found = violations()
    assert not found, "imports against the layering rules:\n" + "\n".join(found)


def test_every_module_has_a_group() -> None:
    """A new module under pipeline/ is placed in :data:`GROUPS` (and this docstring)."""
    assert [module_name(p) for p in sources() if group_of(module_name(p)) is None] == []
    assert group_of("pipeline.not_placed_yet") is None


def test_the_table_is_acyclic() -> None:
    """No two groups may import each other, directly or through others."""
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt}))
                   for nxt in ALLOWED[start])

    assert [g for g in ALLOWED if reaches(g, g, {g})] == []


def test_the_checker_sees_imports_against_the_rules(tmp_path: Path) -> None:
    """Imports at the top, inside a function and under TYPE_CHECKING, relative or not."""
    assert group_of("pipeline.media.image") == "media"
    assert group_of("pipeline.engines.base") == "domain"
    assert group_of("pipeline.cli") == "entry" and group_of("pipeline") == "app"
    assert group_of("kafka.errors") is None
    probe = tmp_path / "pipeline" / "media" / "probe.py"
    probe.parent.mkdir(parents=True)
    (tmp_path / "pipeline" / "stages").mkdir()
    (tmp_path / "pipeline" / "stages" / "runner.py").write_text("")
    probe.write_text("from typing import TYPE_CHECKING\n"
                     "from pipeline.engines.base import Engine\n"
                     "from pipeline.media.frames import FPS\n"
                     "from pipeline.errors import ImageError\n"
                     "if TYPE_CHECKING:\n    import bridge.main\n"
                     "def f():\n    from ..stages import runner\n    import kafka\n"
                     "    from pipeline import cli\n")
    found = violations(tmp_path)
    assert [line.split(";")[0] for line in found] == [
        "pipeline/media/probe.py:2: pipeline.media.probe (media) imports "
        "pipeline.engines.base (domain)",
        "pipeline/media/probe.py:6: pipeline.media.probe (media) imports bridge.main (bridge)",
        "pipeline/media/probe.py:8: pipeline.media.probe (media) imports "
        "pipeline.stages.runner (stages)",
        "pipeline/media/probe.py:10: pipeline.media.probe (media) imports pipeline (app)",
    ]


if __name__ == "__main__":
    problems = violations()
    print("\n".join(problems) or "imports follow the layers")
    sys.exit(1 if problems else 0)
