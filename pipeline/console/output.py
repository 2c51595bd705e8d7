"""Console output: rich on a terminal (colours, tables, live views), plain text elsewhere,
and JSON for scripts (``--json``)."""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.table import Table

#: Width of tables when stdout is not a terminal (a pipe, a file): wide enough not to wrap.
PLAIN_WIDTH = 200

#: Colour of each status in tables (only shown on a terminal).
STATUS_STYLE = {"completed": "green", "failed": "red", "rejected": "red",
                "cancelled": "yellow", "expired": "yellow", "running": "cyan",
                "queued": "blue", "received": "blue", "waiting": "magenta"}


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr): colours and cursor moves on a terminal only."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return Console(file=stream, no_color=not terminal, highlight=False,
                   force_terminal=terminal, width=None if terminal else PLAIN_WIDTH,
                   soft_wrap=not terminal)


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (datetimes as ISO strings)."""
    print(json.dumps(data, indent=2, default=_default))


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def table(*columns: str, title: str | None = None) -> Table:
    """A table with ``columns`` (the first left-aligned, others as given)."""
    out = Table(title=title, title_justify="left", header_style="bold", box=None,
                pad_edge=False)
    for name in columns:
        out.add_column(name, overflow="fold")
    return out


def styled_status(status: str | None) -> str:
    """The status with its colour markup (plain when colours are off)."""
    if not status:
        return "-"
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def seconds(value: float | None) -> str:
    """A duration for people: ``0.42s``, ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def age(when: datetime | None, now: datetime | None = None) -> float | None:
    """Seconds since ``when`` (None stays None)."""
    if when is None:
        return None
    return ((now or datetime.now(timezone.utc)) - when).total_seconds()


def clock(when: datetime | None) -> str:
    """A timestamp for tables: ``2026-11-30 07:01:02`` in UTC."""
    if when is None:
        return "-"
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
