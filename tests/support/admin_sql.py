"""The admin SQL under load: a scratch database with N task rows, and the documented
queries of ``docs/admin-sql.md`` timed with EXPLAIN ANALYZE.

Used by ``tests/pipeline/test_admin_sql.py`` (100,000 rows) and
``tests/bench/bench_admin_sql.py`` (1,000,000 rows, ``make bench-admin-sql``).

The rows (generated in SQL, one statement per table): jobs received evenly over ``days``
days up to now; 90 % completed, 5 % failed (preprocess or gpu, seven codes), 1 % each
rejected, cancelled and expired; of the last hour's jobs 1 % waiting to be dispatched and
1 % in flight, some of them stuck. 40 tenants, a tenth on the sonic engine, a tenth
remote. Events: ``admitted`` for every job, one ended run (``succeeded``, or ``failed``
for the failing stage) per stage reached, with its seconds.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from pipeline.settings import Settings
from pipeline.state import migrate
from pipeline.state.db import make_db_engine

DOC = Path(__file__).resolve().parents[2] / "docs" / "admin-sql.md"

TASKS = """
INSERT INTO tasks (task_id, kafka_topic, kafka_partition, kafka_offset, tenant, priority,
                   engine, status, stage, progress, received_at, queued_at, started_at,
                   finished_at, updated_at, error_code, error_message, callback_url,
                   callback_status, lease_owner, lease_stage, lease_expires_at, heartbeat_at)
SELECT 'job-' || i, 'sonic-video-tasks', i % 16, i / 16, 'tenant-' || (i % 40), i % 10,
       CASE i % 10 WHEN 0 THEN 'sonic' WHEN 1 THEN 'remote' END,
       status, CASE status WHEN 'completed' THEN NULL WHEN 'failed' THEN
                 CASE WHEN i % 2 = 0 THEN 'gpu' ELSE 'preprocess' END
               WHEN 'received' THEN NULL WHEN 'rejected' THEN NULL ELSE 'gpu' END,
       CASE status WHEN 'completed' THEN 100 ELSE 0 END,
       at, at + interval '1 second', at + interval '2 seconds',
       CASE WHEN status IN ('received', 'queued', 'running') THEN NULL
            ELSE at + (20 + i % 90) * interval '1 second' END,
       CASE WHEN status IN ('queued', 'running') AND i % 7 = 0 THEN at
            ELSE at + (20 + i % 90) * interval '1 second' END,
       CASE WHEN status IN ('failed', 'expired') THEN
              CASE WHEN status = 'expired' THEN 'task.deadline'
                   ELSE (ARRAY['image.no_face', 'audio.silent', 'engine.failed', 'input.not_found',
                               'stage.timeout', 'audio.undecodable', 'task.lost'])[1 + i % 7] END
            WHEN status = 'rejected' THEN
              (ARRAY['message.invalid_json', 'message.missing_field', 'message.wrong_type'])[1 + i % 3]
       END,
       CASE WHEN status IN ('failed', 'expired', 'rejected') THEN 'generated' END,
       'https://api.example.com/callback', CASE WHEN status = 'completed' THEN 'delivered' END,
       CASE WHEN status = 'running' THEN 'worker-' || (i % 8) END,
       CASE WHEN status = 'running' THEN 'gpu' END,
       CASE WHEN status = 'running' THEN
         CASE WHEN i % 7 = 0 THEN at ELSE now() + interval '2 minutes' END END,
       CASE WHEN status = 'running' THEN at END
  FROM (SELECT i, now() - (:n - i) * (:days * interval '1 day') / :n AS at,
               CASE WHEN i % 100 < 90 THEN 'completed' WHEN i % 100 < 95 THEN 'failed'
                    WHEN i % 100 = 95 THEN 'rejected' WHEN i % 100 = 96 THEN 'cancelled'
                    WHEN i % 100 = 97 THEN 'expired'
                    WHEN :n - i > :n / (:days * 24) THEN 'completed'
                    WHEN i % 100 = 98 THEN 'received'
                    WHEN i % 200 = 99 THEN 'queued' ELSE 'running' END AS status
          FROM generate_series(1, :n) AS i) AS g
"""

#: ``admitted`` for every job; one ended run per stage reached.
EVENTS = """
INSERT INTO task_events (task_id, stage, event, worker, attempt, at, duration_s)
SELECT task_id, NULL, 'admitted', NULL, 0, received_at, NULL FROM tasks;
INSERT INTO task_events (task_id, stage, event, worker, attempt, at, duration_s)
SELECT t.task_id, s.stage,
       CASE WHEN t.status = 'failed' AND s.stage = t.stage THEN 'failed' ELSE 'succeeded' END,
       'worker-' || (t.seq % 8), 1,
       t.started_at + s.n * interval '8 seconds',
       s.base * (0.5 + (t.seq % 97) / 97.0)
  FROM tasks t
  JOIN (VALUES (1, 'preprocess', 0.4), (2, 'gpu', 40.0), (3, 'encode', 1.5),
               (4, 'upload', 0.3), (5, 'callback', 0.1)) AS s(n, stage, base)
    ON t.status = 'completed'
       OR (t.status = 'failed' AND (s.n = 1 OR (s.n = 2 AND t.stage = 'gpu')));
"""


@dataclass
class Query:
    title: str
    sql: str


@dataclass
class Timed:
    query: Query
    ms: float  #: execution time EXPLAIN ANALYZE reports, planning included
    plan: str


def documented_queries(doc: Path = DOC) -> list[Query]:
    """Every ```sql block of the doc, titled by the heading above it (### ...)."""
    out, title = [], ""
    for block in re.finditer(r"^### ([^\n]+)$|^```sql\n(.*?)^```", doc.read_text(),
                             re.MULTILINE | re.DOTALL):
        if block.group(1):
            title = block.group(1).strip()
        else:
            out.append(Query(title, block.group(2).strip().rstrip(";")))
    return out


@contextmanager
def scratch_database(stack: Settings, name: str) -> Iterator[Settings]:
    """A throwaway database migrated to head; dropped on the way out."""
    admin = make_db_engine(stack, isolation_level="AUTOCOMMIT", pool_size=1)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        scratch = stack.model_copy(update={"pg_database": name})
        migrate.upgrade(scratch)
        yield scratch
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_SECONDARY = text("""
SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS definition
  FROM pg_index i
 WHERE i.indrelid IN ('tasks'::regclass, 'task_events'::regclass)
   AND NOT i.indisprimary AND NOT i.indisunique""")


def load(db_engine: Engine, n: int, days: float) -> dict[str, Any]:
    """Insert ``n`` jobs over ``days`` days and their events; VACUUM ANALYZE. Returns counts
    and the seconds it took.

    A scratch database: the events' foreign key is not checked row by row, the tables'
    triggers (tenant counts, status outbox) are off, and the secondary indexes are dropped
    for the load and made again after it from their own definitions (the same indexes,
    built in one pass).
    """
    begin = time.monotonic()
    with db_engine.begin() as conn:
        conn.execute(text("ALTER TABLE task_events DROP CONSTRAINT IF EXISTS "
                          "task_events_task_id_fkey"))
        for table in ("tasks", "task_events"):
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        indexes = conn.execute(_SECONDARY).all()
        for index in indexes:
            conn.execute(text(f"DROP INDEX {index.name}"))
        conn.execute(text(TASKS), {"n": n, "days": days})
        conn.execute(text("ANALYZE tasks"))
        for statement in EVENTS.split(";"):
            if statement.strip():
                conn.execute(text(statement))
        for index in indexes:
            conn.execute(text(index.definition))
        events = conn.execute(text("SELECT count(*) FROM task_events")).scalar_one()
    loaded = time.monotonic() - begin
    with db_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE tasks"))
        conn.execute(text("VACUUM ANALYZE task_events"))
    return {"tasks": n, "events": events, "indexes": len(indexes), "load_s": loaded,
            "vacuum_s": time.monotonic() - begin - loaded}


def explain(db_engine: Engine, query: Query) -> Timed:
    """Run the query under EXPLAIN (ANALYZE, BUFFERS); its planning + execution time."""
    with db_engine.connect() as conn:
        lines = [row[0] for row in conn.execute(
            text(f"EXPLAIN (ANALYZE, BUFFERS) {query.sql}"))]
    ms = sum(float(m.group(1)) for line in lines
             for m in [re.match(r"(?:Planning|Execution) Time: ([\d.]+) ms", line)] if m)
    return Timed(query, ms, "\n".join(lines))
