"""Multi-row writes shared by admission and the reconciler, on a psycopg2 cursor.

    insert_events(cur, events)  one multi-row INSERT INTO task_events

The caller owns the transaction: a bridge's psycopg2 connection, or a SQLAlchemy
``Connection.connection.cursor()`` inside the reconciler's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

_INSERT_EVENTS = """
INSERT INTO task_events (task_id, stage, event, attempt, detail)
SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[], %s::jsonb[])"""


class EventRow(NamedTuple):
    """One ``task_events`` row; ``detail`` is a dict or its JSON text."""

    task_id: str
    stage: str | None
    event: str
    attempt: int = 0
    detail: dict[str, Any] | str = "{}"


def insert_events(cur: Any, events: Sequence[EventRow]) -> None:
    """Append ``events`` in one statement (nothing when empty)."""
    if not events:
        return
    ids, stages, names, attempts, details = (list(col) for col in zip(*events))
    cur.execute(_INSERT_EVENTS, (ids, stages, names, attempts,
                                 [d if isinstance(d, str) else json.dumps(d) for d in details]))
