"""The status events of inserted jobs (``admitted``, ``rejected``: the insert trigger of
migration 0008) on the real PostgreSQL: one per job, numbered after the task's earlier
events, in admission order, each body the task as ``sonic_status_body`` tells it."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from tests.pipeline.status.conftest import Jobs

pytestmark = pytest.mark.integration

#: Each event's body against the body of its task's row told at the event's own time.
_SAME_BODY = text("""
SELECT o.task_id, o.body = sonic_status_body(t, o.event, NULL, (o.body->>'at')::timestamptz,
                                              NULL, NULL) AS same
FROM status_outbox o JOIN tasks t ON t.task_id = o.task_id
WHERE o.topic = :topic ORDER BY o.id""")


def _delete(db: Engine, *task_ids: str) -> None:
    with db.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE task_id = ANY(:ids)"), {"ids": list(task_ids)})


def test_a_job_admitted_again_after_its_row_was_deleted_goes_on_numbering(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    """Three kinds of earlier history: admitted only, rejected, admitted then cancelled."""
    plain, refused, cancelled = (f"{kind}-{unique}" for kind in ("plain", "refused", "cancel"))
    jobs.admit(plain, cancelled, rejects=((refused, "message.wrong_type"),))
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'cancelled', finished_at = now() "
                          "WHERE task_id = :t"), {"t": cancelled})
    _delete(db_engine, plain, refused, cancelled)
    jobs.admit(plain, refused, cancelled)
    assert [(r["event"], r["seq"]) for r in jobs.outbox(plain)] == [
        ("admitted", 1), ("admitted", 2)]
    assert [(r["event"], r["seq"]) for r in jobs.outbox(refused)] == [
        ("rejected", 1), ("admitted", 2)]
    assert [(r["event"], r["seq"]) for r in jobs.outbox(cancelled)] == [
        ("admitted", 1), ("cancelled", 2), ("admitted", 3)]


def test_a_batchs_events_follow_admission_order_with_the_rows_bodies(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    """Admitted jobs (with and without tenant) and rejects in one batch: ids in ``seq``
    order, one event each, every body equal to its row's."""
    ids = [f"batch-{i}-{unique}" for i in range(6)]
    rejects = tuple((f"bad-{i}-{unique}", code) for i, code in
                    enumerate(("message.wrong_type", "message.missing_field")))
    jobs.admit(*ids[:3], tenant="acme", rejects=rejects)
    jobs.admit(*ids[3:])
    with db_engine.connect() as conn:
        told = conn.execute(text(
            "SELECT o.task_id, o.event, o.seq FROM status_outbox o "
            "JOIN tasks t ON t.task_id = o.task_id WHERE o.topic = :topic ORDER BY o.id"),
            {"topic": jobs.topic}).all()
        by_seq = conn.execute(text("SELECT task_id FROM tasks WHERE kafka_topic = :topic "
                                   "ORDER BY seq"), {"topic": jobs.topic}).scalars().all()
        same = conn.execute(_SAME_BODY, {"topic": jobs.topic}).all()
    assert [t for t, _, _ in told] == by_seq
    assert sorted(by_seq) == sorted(ids + [r for r, _ in rejects])
    assert {(t, e, s) for t, e, s in told} == (
        {(t, "admitted", 1) for t in ids} | {(t, "rejected", 1) for t, _ in rejects})
    assert all(ok for _, ok in same) and len(same) == 8
    with db_engine.connect() as conn:
        tenants = dict(conn.execute(text(
            "SELECT task_id, body->>'tenant' FROM status_outbox WHERE topic = :topic"),
            {"topic": jobs.topic}).all())
    assert [tenants[t] for t in ids] == ["acme"] * 3 + [None] * 3


def test_a_redelivered_job_adds_no_event(jobs: Jobs, unique: str) -> None:
    """A duplicate in a later batch, twice in one batch, and a reject of an admitted id."""
    task, twice = f"once-{unique}", f"twice-{unique}"
    jobs.admit(task)
    jobs.admit(task, twice, twice, rejects=((task, "message.wrong_type"),))
    assert [(r["event"], r["seq"]) for r in jobs.outbox(task)] == [("admitted", 1)]
    assert [(r["event"], r["seq"]) for r in jobs.outbox(twice)] == [("admitted", 1)]
