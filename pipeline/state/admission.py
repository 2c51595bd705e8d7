"""Batch admission SQL: many jobs, one transaction, a few statements.

    admit(cur, rows, rejects)   COPY the jobs into a temp table, lock their ordering keys'
                                buckets (two bridges, one key), then one statement:
                                INSERT INTO tasks ... ON CONFLICT (task_id) DO NOTHING
                                RETURNING, and an 'admitted' event per inserted row;
                                rejects and 'duplicate'/'rejected' events multi-row
                                a job cancelled before its message came takes the
                                message's fields, and its callback is owed
    hold(cur, ids)              the candidates admit named: 'waiting' when an earlier job
                                of their ordering key is not final (one UPDATE)

What :func:`pipeline.scheduler.settle.settle` decides for a job without ``depends_on`` (it
has no dependency to record, to cycle through or to fail on) comes down to its ordering
key: ``waiting`` when an earlier job of the key is not final. ``admit`` finds the few jobs
for which that can hold (the key has a job not final already, or an earlier one in this
batch) while it inserts, and ``hold`` decides for those only, after settle has dealt with
the jobs that have ``depends_on`` (``AdmittedRows.to_settle``), as settle would: the same
statuses and status events, without a per-row check of every job.

They take a psycopg2 cursor: the caller owns the transaction (commit = durable). COPY is
about three times faster than a multi-row VALUES insert here (measured on 2 cores); the
temp table holds only the copied columns, so no other default is computed twice.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg2.extras import execute_values

from pipeline.state import bulk
from pipeline.state.bulk import EventRow

#: The tasks columns an admitted job fills; a job's row is a plain tuple in this order.
TASK_COLUMNS = ("task_id", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_key",
                "ordering_key", "tenant", "user_id", "priority", "engine", "depends_on",
                "deadline", "payload", "config", "callback_url")
_COLUMNS = ", ".join(TASK_COLUMNS)
_DEPENDS_ON = TASK_COLUMNS.index("depends_on")
_ORDERING_KEY = TASK_COLUMNS.index("ordering_key")
#: Final statuses: a job of the same ordering key in one of these no longer holds it.
_FINAL = "('completed', 'failed', 'rejected', 'cancelled', 'expired')"

# The copied columns only, with the tasks table's types (emptied at each commit).
_STAGE = ("CREATE TEMP TABLE IF NOT EXISTS admission_rows ON COMMIT DELETE ROWS AS "
          f"SELECT {_COLUMNS} FROM tasks WITH NO DATA")
_COPY = f"COPY admission_rows ({_COLUMNS}) FROM STDIN"
#: Two bridges may admit jobs of one ``ordering_key`` at once (an explicit key spans
#: partitions, and so bridges): each would see its job as the head of the key, the other's
#: insert being uncommitted. So before inserting, a batch takes a transaction lock per
#: bucket of its keys (``KEY_BUCKETS`` buckets, in bucket order, so two batches never
#: deadlock): the second batch inserts after the first commits, later in ``seq``, and sees
#: its job. A bucket bounds the locks one batch holds; keys sharing one only serialize
#: the batches that carry them. A key orders the jobs of its own topic (migration 0011),
#: so the bucket hashes the topic with the key: one key on two topics never makes their
#: batches wait for each other.
KEY_BUCKETS = 256
KEY_LOCK_SPACE = 0x534B  # the advisory lock space of admission's key buckets
_LOCK_KEYS = f"""
SELECT count(pg_advisory_xact_lock({KEY_LOCK_SPACE}, b)) FROM (
    SELECT DISTINCT hashtext(kafka_topic || '/' || ordering_key) & {KEY_BUCKETS - 1} AS b
    FROM admission_rows
    WHERE ordering_key IS NOT NULL ORDER BY b) AS buckets"""

_INSERT_TASKS = f"""
WITH staged AS (
    -- nth: the job's place among this batch's jobs of the same ordering key.
    SELECT s.*, row_number() OVER (PARTITION BY s.kafka_topic, s.ordering_key
                                   ORDER BY s.kafka_partition, s.kafka_offset) AS nth
    FROM admission_rows s
), new AS (
    -- In offset order: tasks.seq, the admission order jobs of one ordering key run in.
    INSERT INTO tasks ({_COLUMNS}) SELECT {_COLUMNS} FROM staged
    ORDER BY kafka_partition, kafka_offset
    ON CONFLICT (task_id) DO NOTHING RETURNING task_id
), events AS (
    INSERT INTO task_events (task_id, event) SELECT task_id, 'admitted' FROM new
)
-- May wait for its key: an earlier job of the batch, or one not final already.
SELECT new.task_id, staged.ordering_key IS NOT NULL AND (staged.nth > 1 OR EXISTS (
           SELECT 1 FROM tasks o WHERE o.ordering_key = staged.ordering_key
             AND o.kafka_topic IS NOT DISTINCT FROM staged.kafka_topic  -- per topic
             AND o.status NOT IN {_FINAL}))
FROM new JOIN staged ON staged.task_id = new.task_id"""

#: Settle's ``waiting`` rule for jobs without dependencies: an earlier job of the ordering
#: key that is not final (``sonic_key_head``, as a join).
_HOLD = f"""
UPDATE tasks t SET status = 'waiting', updated_at = now()
WHERE t.task_id = ANY(%(ids)s) AND t.status = 'received' AND EXISTS (
    SELECT 1 FROM tasks o WHERE o.ordering_key = t.ordering_key AND o.seq < t.seq
      AND o.kafka_topic IS NOT DISTINCT FROM t.kafka_topic
      AND o.status NOT IN {_FINAL})
RETURNING t.task_id"""

#: A job cancelled before its message came (the control consumer's ``cancelled`` row, no
#: Kafka position, no callback URL, its callback settled as ``none``) takes the message's
#: fields when it comes, and its callback is owed again (``callback_status`` NULL: the
#: dispatcher's upkeep sends the ``cancelled`` callback): cancelled jobs get theirs.
_FILL_CANCELLED = f"""
UPDATE tasks t SET ({", ".join(TASK_COLUMNS[2:])}) = ({", ".join(
    "s." + c for c in TASK_COLUMNS[2:])}), callback_status = NULL, updated_at = now()
FROM admission_rows s
WHERE t.task_id = s.task_id AND t.status = 'cancelled' AND t.kafka_partition IS NULL
  AND t.callback_url IS NULL AND t.callback_status = 'none' AND s.callback_url IS NOT NULL
RETURNING t.task_id"""

_INSERT_REJECTS = """
INSERT INTO tasks (task_id, kafka_topic, kafka_partition, kafka_offset, kafka_key, status,
                   error_code, error_message, callback_url, finished_at)
VALUES %s ON CONFLICT (task_id) DO NOTHING RETURNING task_id"""
_REJECT_TEMPLATE = "(%s, %s, %s, %s, %s, 'rejected', %s, %s, %s, now())"

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


@dataclass(frozen=True)
class RejectRow:
    task_id: str
    topic: str
    partition: int
    offset: int
    key: str | None
    code: str
    message: str
    #: An allowed callback URL the message named: the rejection is delivered there too.
    callback_url: str | None = None


@dataclass(frozen=True)
class AdmittedRows:
    new: list[str]  #: task ids inserted by this batch, in batch order
    duplicates: list[str]  #: task ids that were already there (or twice in the batch)
    rejected: list[str]  #: reject rows inserted (a reject whose id exists adds nothing)
    #: New jobs with ``depends_on``, for :func:`pipeline.scheduler.settle.settle`.
    to_settle: list[str] = field(default_factory=list)
    #: New jobs without, whose ordering key may hold them: for :func:`hold`.
    to_hold: list[str] = field(default_factory=list)


def admit(cur: Any, rows: Sequence[tuple[Any, ...]],
          rejects: Sequence[RejectRow] = ()) -> AdmittedRows:
    """Insert jobs and rejects with their events; the caller commits."""
    unique: dict[str, tuple[Any, ...]] = {}
    for row in rows:
        unique.setdefault(row[0], row)
    new: set[str] = set()
    may_wait: list[str] = []
    if unique:
        cur.execute(_STAGE)
        cur.copy_expert(_COPY, io.StringIO(copy_text(unique.values())))
        if any(row[_ORDERING_KEY] is not None for row in unique.values()):
            cur.execute(_LOCK_KEYS)
        cur.execute(_INSERT_TASKS)
        for task_id, keyed in cur.fetchall():
            new.add(task_id)
            if keyed:
                may_wait.append(task_id)
    admitted: list[str] = []
    duplicates: list[str] = []
    seen: set[str] = set()
    for row in rows:
        task_id = row[0]
        (admitted if task_id in new and task_id not in seen else duplicates).append(task_id)
        seen.add(task_id)
    if duplicates:  # while the staged rows are there (they go at commit)
        cur.execute(_FILL_CANCELLED)
    rejected, details = _rejects(cur, rejects)
    bulk.insert_events(cur, [EventRow(t, None, "duplicate") for t in duplicates]
                       + [EventRow(t, None, "rejected", 0, d) for t, d in zip(rejected, details)])
    to_settle = [t for t in admitted if unique[t][_DEPENDS_ON]]
    to_hold = [t for t in may_wait if not unique[t][_DEPENDS_ON]]
    return AdmittedRows(admitted, duplicates, rejected, to_settle, to_hold)


def hold(cur: Any, ids: Sequence[str]) -> list[str]:
    """Make ``ids`` (new jobs without ``depends_on``) ``waiting`` where an earlier job of
    their ordering key is not final; the ids made waiting. Call after settle."""
    if not ids:
        return []
    cur.execute(_HOLD, {"ids": list(ids)})
    return [row[0] for row in cur.fetchall()]


def _rejects(cur: Any, rejects: Sequence[RejectRow]) -> tuple[list[str], list[str]]:
    if not rejects:
        return [], []
    by_id: dict[str, RejectRow] = {}
    for r in rejects:
        by_id.setdefault(r.task_id, r)
    found = execute_values(
        cur, _INSERT_REJECTS,
        [(r.task_id, r.topic, r.partition, r.offset, r.key, r.code, r.message, r.callback_url)
         for r in by_id.values()],
        template=_REJECT_TEMPLATE, page_size=len(by_id), fetch=True)
    inserted = {r[0] for r in found}
    rejected = [task_id for task_id in by_id if task_id in inserted]
    return rejected, [json.dumps({"code": by_id[t].code, "message": by_id[t].message,
                                  "partition": by_id[t].partition,
                                  "offset": by_id[t].offset}) for t in rejected]


def copy_text(rows: Iterable[tuple[Any, ...]]) -> str:
    """The rows in COPY's text format: one line each, tab-separated, ``\\N`` for NULL."""
    return "".join(map(_copy_line, rows))


def _copy_line(row: tuple[Any, ...]) -> str:
    """One row in COPY's text format. The common case is checked on the joined line: with
    exactly one tab between fields, no newline or CR, and no backslash but those of the
    NULL markers (None and an empty list), no field needed escaping (a hot path)."""
    line = "\t".join([v if v.__class__ is str else _copy_value(v) for v in row])
    if (line.count("\t") == len(row) - 1
            and line.count("\\") == row.count(None) + row.count([])
            and "\n" not in line and "\r" not in line):
        return line + "\n"
    return "\t".join([_copy_value(v) for v in row]) + "\n"


def _copy_value(value: Any) -> str:
    """One field in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_ESCAPES)
    if isinstance(value, list):
        return _pg_array(value).translate(_ESCAPES) if value else "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _pg_array(items: list[str]) -> str:
    quoted = ('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)
    return "{" + ",".join(quoted) + "}"
