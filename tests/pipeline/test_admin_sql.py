"""The admin views (migration 0005) on the real PostgreSQL: every query of
docs/admin-sql.md under a second at 100,000 task rows (the 1,000,000-row run is
``make bench-admin-sql``), the views' answers on jobs whose outcome we know, and the
read-only role."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
from sqlalchemy import Engine, text

from ops.services.postgres import Postgres
from pipeline.settings import Settings
from pipeline.state.db import make_db_engine
from tests.support import admin_sql

pytestmark = pytest.mark.integration

ROWS = 100_000
VIEWS = ("admin_stage_runs", "admin_stage_latency", "admin_stage_latency_24h",
         "admin_throughput_hourly", "admin_failures_by_code", "admin_tenant_usage",
         "admin_stuck_jobs", "admin_dlq_hourly")


@pytest.fixture(scope="module")
def loaded(stack: Settings) -> Iterator[tuple[Settings, Engine]]:
    """A scratch database at head with 100,000 generated jobs (the role exists first, as
    on the local stack, so the migration grants it)."""
    Postgres(stack).ensure()
    with admin_sql.scratch_database(stack, "sonic_admin_sql_test") as scratch:
        db_engine = make_db_engine(scratch, pool_size=2)
        admin_sql.load(db_engine, ROWS, days=30)
        yield scratch, db_engine
        db_engine.dispose()


def test_every_documented_query_answers_under_a_second(loaded) -> None:
    _, db_engine = loaded
    queries = admin_sql.documented_queries()
    # Every view is asked about in the doc; the README's question is there too.
    assert len(queries) >= 10
    assert [v for v in VIEWS if not any(v in q.sql for q in queries)] == []
    assert any("current_date - 1" in q.sql and "error_code" in q.sql for q in queries)
    slow = []
    for query in queries:
        timed = admin_sql.explain(db_engine, query)
        print(f"{timed.ms:8.1f} ms  {query.title}")
        if timed.ms >= 1000:
            slow.append((query.title, timed.plan))
    assert not slow, slow
    # The indexes the views were made for are the ones used.
    plans = {q.title: admin_sql.explain(db_engine, q).plan for q in queries}
    assert "ix_task_events_runs" in plans["Stage latency per stage and engine, last hour"]
    assert "ix_tasks_failed_finished" in plans["How many failed yesterday, and why?"]
    assert "Seq Scan on tasks" not in plans["GPU-seconds per tenant, last 24 hours"]


def _job(conn, task_id: str, **cols) -> None:
    cols = {"task_id": task_id, "kafka_topic": "admin-test", **cols}
    names = ", ".join(cols)
    conn.execute(text(f"INSERT INTO tasks ({names}) VALUES "
                      f"({', '.join(':' + k for k in cols)})"), cols)


def _run(conn, task_id: str, stage: str, event: str, seconds: float, at: datetime) -> None:
    conn.execute(text("INSERT INTO task_events (task_id, stage, event, at, duration_s) "
                      "VALUES (:t, :s, :e, :at, :d)"),
                 {"t": task_id, "s": stage, "e": event, "at": at, "d": seconds})


def test_the_views_answer_for_jobs_whose_outcome_we_know(loaded, unique: str) -> None:
    _, db_engine = loaded
    now = datetime.now(timezone.utc)
    ago = lambda **kw: now - timedelta(**kw)  # noqa: E731
    tenant, engine, code, reject = f"acme-{unique}", f"eng-{unique}", f"x.{unique}", f"m.{unique}"
    ids = lambda name: f"{name}-{unique}"  # noqa: E731
    with db_engine.connect() as conn:  # rolled back at the end
        # Two rendered videos and a failed render of one tenant, on one engine.
        for name, gpu_s, minutes in (("ok1", 30.0, 10), ("ok2", 50.0, 20)):
            _job(conn, ids(name), tenant=tenant, engine=engine, status="completed",
                 received_at=ago(minutes=minutes + 5), finished_at=ago(minutes=minutes))
            _run(conn, ids(name), "gpu", "succeeded", gpu_s, ago(minutes=minutes + 1))
            _run(conn, ids(name), "encode", "succeeded", 2.0, ago(minutes=minutes))
        _job(conn, ids("bad"), tenant=tenant, engine=engine, status="failed", stage="gpu",
             error_code=code, received_at=ago(minutes=30), finished_at=ago(minutes=29))
        _run(conn, ids("bad"), "gpu", "failed", 12.5, ago(minutes=29))
        # Two days old: outside every window.
        _job(conn, ids("old"), tenant=tenant, engine=engine, status="failed", stage="gpu",
             error_code=code, received_at=ago(days=2), finished_at=ago(days=2))
        _run(conn, ids("old"), "gpu", "succeeded", 999.0, ago(days=2))
        # Stuck: a lease that expired; no lease and no progress for 20 minutes. Not stuck:
        # a live lease; a job queued a minute ago.
        _job(conn, ids("expired"), tenant=tenant, status="running", stage="gpu",
             lease_owner="w1", lease_expires_at=ago(minutes=3), updated_at=ago(minutes=5))
        _job(conn, ids("vanished"), tenant=tenant, status="queued", stage="encode",
             updated_at=ago(minutes=20))
        _job(conn, ids("live"), tenant=tenant, status="running", stage="gpu",
             lease_owner="w2", lease_expires_at=now + timedelta(minutes=2),
             updated_at=ago(minutes=30))
        _job(conn, ids("fresh"), tenant=tenant, status="queued", stage="preprocess",
             updated_at=ago(minutes=1))
        # Three rejected messages this hour.
        for i in range(3):
            _job(conn, ids(f"rej{i}"), status="rejected", error_code=reject,
                 received_at=now, finished_at=now)

        usage = conn.execute(text("SELECT gpu_seconds, gpu_runs, videos FROM "
                                  "admin_tenant_usage WHERE tenant = :t"), {"t": tenant}).one()
        assert (float(usage.gpu_seconds), usage.gpu_runs, usage.videos) == (92.5, 3, 2)

        latency = {r.stage: r for r in conn.execute(text(
            "SELECT * FROM admin_stage_latency WHERE engine = :e"), {"e": engine})}
        assert set(latency) == {"gpu", "encode"}
        assert (latency["gpu"].runs, float(latency["gpu"].p50_s),
                float(latency["gpu"].max_s)) == (2, 40.0, 50.0)

        failures = conn.execute(text("SELECT stage, jobs FROM admin_failures_by_code "
                                     "WHERE error_code = :c"), {"c": code}).all()
        assert [tuple(r) for r in failures] == [("gpu", 1)]

        stuck = dict(conn.execute(text("SELECT task_id, reason FROM admin_stuck_jobs "
                                       "WHERE tenant = :t"), {"t": tenant}).all())
        assert stuck == {ids("expired"): "lease_expired", ids("vanished"): "no_progress"}

        dlq = conn.execute(text("SELECT sum(messages) FROM admin_dlq_hourly "
                                "WHERE error_code = :c"), {"c": reject}).scalar_one()
        assert dlq == 3

        hours = conn.execute(text("SELECT hour, admitted, rejected FROM "
                                  "admin_throughput_hourly")).all()
        assert len(hours) == 48 and hours[-1].hour <= now
        direct = conn.execute(text(
            "SELECT count(*) FROM tasks WHERE received_at >= date_trunc('hour', now()) "
            "- interval '47 hours'")).scalar_one()
        assert sum(h.admitted for h in hours) == direct
        assert hours[-1].rejected >= 3
        conn.rollback()


def test_the_read_only_role_reads_and_writes_nothing(loaded, unique: str) -> None:
    scratch, _ = loaded
    login, password = f"ro_{unique}", f"pw-{unique}"
    su = Postgres(scratch).superuser()
    su.autocommit = True
    try:
        with su.cursor() as cur:
            cur.execute(f"CREATE ROLE {login} LOGIN PASSWORD %s IN ROLE sonic_readonly",
                        (password,))
        conn = psycopg2.connect(host=scratch.pg_host, port=scratch.pg_port, user=login,
                                password=password, dbname=scratch.pg_database)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                for view in VIEWS:
                    cur.execute(f"SELECT count(*) FROM {view}")
                cur.execute("SELECT count(*) FROM tasks")
                assert cur.fetchone()[0] >= ROWS
                for statement in ("UPDATE tasks SET status = 'failed'",
                                  "DELETE FROM task_events",
                                  "INSERT INTO tenants (topic, tenant) VALUES ('x', 'y')",
                                  "CREATE TABLE mine (id int)",
                                  "DROP VIEW admin_stuck_jobs"):
                    with pytest.raises(psycopg2.Error) as caught:
                        cur.execute(statement)
                    assert caught.value.pgcode == "42501", statement  # insufficient privilege
        finally:
            conn.close()
    finally:
        with su.cursor() as cur:
            cur.execute(f"DROP ROLE IF EXISTS {login}")
        su.close()
