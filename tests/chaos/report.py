"""The chaos report: one row per scenario run, as a table on stdout and as JSON.

A row is an outcome's ``row()`` (:class:`tests.chaos.scenario.Entry`): ``scenario``,
``jobs``, ``lost``, ``duplicated``, ``recovery_s`` (from the end of the last fault to every
job settled), ``wall_s``, ``passed``, ``problems``, and where a scenario measures it
``stall_s`` (the longest time no stage of the run succeeded); anything else is kept in the
JSON.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

COLUMNS = (("scenario", 24), ("jobs", 5), ("lost", 5), ("dup", 4), ("recover s", 10),
           ("stall s", 8), ("wall s", 7), ("result", 6))


def _cell(row: dict[str, Any], name: str) -> str:
    if name == "dup":
        return str(row.get("duplicated", ""))
    if name == "recover s":
        value = row.get("recovery_s")
        return "-" if value is None else f"{value:.1f}"
    if name == "stall s":
        value = row.get("stall_s")
        return "-" if value is None else f"{value:.1f}"
    if name == "wall s":
        return f"{row.get('wall_s', 0):.1f}"
    if name == "result":
        return "pass" if row.get("passed") else "FAIL"
    return str(row.get(name, ""))


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width table, then each failing row's first problems."""
    lines = ["  ".join(f"{name:<{width}}" for name, width in COLUMNS),
             "  ".join("-" * width for _, width in COLUMNS)]
    for row in rows:
        lines.append("  ".join(f"{_cell(row, name):<{width}}" for name, width in COLUMNS))
    for row in rows:
        if not row.get("passed"):
            lines.append(f"{row.get('scenario')}:")
            lines.extend(f"    {p}"[:400] for p in (row.get("problems") or ["(no detail)"])[:8])
    return "\n".join(lines)


def write_json(rows: list[dict[str, Any]], path: Path, *, seed: int, mode: str) -> Path:
    """``{"when", "seed", "mode", "cores", "passed", "scenarios": rows}`` to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seed": seed,
            "mode": mode, "cores": os.cpu_count(), "machine": platform.machine(),
            "passed": all(r.get("passed") for r in rows), "scenarios": rows}
    path.write_text(json.dumps(body, indent=2, default=str) + "\n")
    return path
