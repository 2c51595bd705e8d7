"""Step 2: admit a batch in one Postgres transaction (jobs, rejects, events), each new job
scheduled in the same transaction: a job with ``depends_on`` by
:func:`pipeline.scheduler.settle.settle` (runnable, waiting for its ordering key or
dependencies, failed for a failed one, or refused for a dependency cycle), then the others
held for their ordering key where an earlier job of it is not final
(:func:`pipeline.state.admission.hold`, settle's rule for them, on the few it can apply to).

A row Postgres refuses to store (a NUL or NaN inside the JSON, say) would fail the whole
batch: the batch is then retried without it, and it becomes a rejection of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg2

from bridge.db import Postgres
from bridge.decode import Decoded, Rejection
from bridge.phases import PHASES
from pipeline.errors import InvalidMessage
from pipeline.scheduler.settle import settle
from pipeline.state import admission, wake

log = logging.getLogger(__name__)


@dataclass
class Admitted:
    new: list[tuple[str, int]] = field(default_factory=list)  #: (task id, priority)
    duplicates: int = 0
    rejections: list[Rejection] = field(default_factory=list)


class Admit:
    def __init__(self, db: Postgres) -> None:
        self.db = db

    def __call__(self, batch: Decoded) -> Admitted:
        rows, rejections = batch.rows, list(batch.rejections)
        try:
            result = self._write(rows, rejections)
        except psycopg2.DataError:
            rows, refused = self._isolate(batch)
            rejections += refused
            result = self._write(rows, rejections)
        priority = {row[0]: row[8] for row in rows}
        return Admitted([(t, priority[t]) for t in result.new], len(result.duplicates),
                        rejections)

    def _write(self, rows: list[tuple[Any, ...]], rejections: list[Rejection]) -> Any:
        rejects = [row for row in (r.row() for r in rejections) if row is not None]
        with self.db.transaction() as cur:
            with PHASES.timed("copy"):
                result = admission.admit(cur, rows, rejects)
            with PHASES.timed("settle"):
                settle(cur, result.to_settle)
                admission.hold(cur, result.to_hold)
            if result.new:  # at the commit: the dispatcher picks them now, not at its poll
                topic = admission.TASK_COLUMNS.index("kafka_topic")
                wake.notify(cur, {row[topic] for row in rows})
            committing = time.perf_counter()
        PHASES.add("pg_commit", time.perf_counter() - committing)
        return result

    def _isolate(self, batch: Decoded) -> tuple[list[tuple[Any, ...]], list[Rejection]]:
        """Try each row alone (rolled back); keep the storable ones."""
        keep: list[tuple[Any, ...]] = []
        refused: list[Rejection] = []
        with self.db.transaction() as cur:
            for row, record in zip(batch.rows, batch.row_records):
                cur.execute("SAVEPOINT one")
                try:
                    admission.admit(cur, [row])
                    keep.append(row)
                except psycopg2.DataError as exc:
                    reason = str(exc).strip().splitlines()[0]
                    refused.append(Rejection(record, InvalidMessage(
                        f"the JSON cannot be stored: {reason}", code="message.invalid_json",
                        partition=record.partition, offset=record.offset, task_id=row[0])))
                cur.execute("ROLLBACK TO SAVEPOINT one")
        log.warning("admit: %d message(s) of the batch cannot be stored; rejected", len(refused))
        return keep, refused
