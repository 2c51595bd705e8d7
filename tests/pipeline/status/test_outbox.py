"""The outbox triggers on the real PostgreSQL: every writer's state change becomes one
status event, numbered per task in commit order."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, text

from pipeline.scheduler import cancel, pick, upkeep
from pipeline.settings import STAGES
from pipeline.state import journal, leases
from pipeline.state.status import Status
from pipeline.status import events_after, latest_status
from pipeline.status.events import EVENTS, SCHEMA_VERSION
from pipeline.status.outbox import prune
from tests.pipeline.status.conftest import Jobs

pytestmark = pytest.mark.integration

BODY_KEYS = {"schema_version", "id", "seq", "task_id", "event", "status", "stage", "progress",
             "attempt", "at", "error", "timings", "video_url", "tenant", "detail"}


def run_stages(db: Engine, task_id: str, stages: tuple[str, ...] = STAGES) -> None:
    """Each stage as the runner does it: lease, started, progress, advance, succeeded."""
    for stage in stages:
        lease = leases.acquire(db, task_id, stage, f"w-{stage}", 30)
        assert isinstance(lease, leases.Lease), lease
        journal.record(db, task_id, stage, "started", worker=lease.owner, attempt=1)
        if stage == "gpu":
            assert leases.heartbeat(db, lease, 30, progress=50.0) is leases.Beat.LIVE
        nxt = STAGES[STAGES.index(stage) + 1] if stage != "callback" else None
        fields = {"status": "completed", "result_url": "https://cdn/v.mp4"} \
            if stage == "upload" else {}
        if stage == "callback":
            fields = {"callback_status": "delivered"}
        assert leases.advance(db, lease, nxt, **fields)
        journal.record(db, task_id, stage, "succeeded", worker=lease.owner, attempt=1,
                       duration_s=0.25)


def test_a_job_from_admission_to_callback_tells_every_change(jobs: Jobs, db_engine: Engine,
                                                             unique: str) -> None:
    task = f"life-{unique}"
    jobs.admit(task, tenant="acme")
    with db_engine.begin() as conn:
        assert pick.pick(conn, jobs.topic, 100).task_id == task
    run_stages(db_engine, task)

    rows = jobs.outbox(task)
    stage_names = [(r["event"], r["body"]["stage"]) for r in rows]
    assert stage_names[:3] == [("admitted", None), ("queued", "preprocess"),
                               ("running", "preprocess")]
    expected = []
    for stage in STAGES:
        expected.append(("stage_started", stage))
        if stage == "gpu":
            expected.append(("progress", "gpu"))
        if stage == "upload":
            expected.append(("completed", "callback"))
        expected.append(("stage_succeeded", stage))
    assert stage_names[3:] == expected
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["topic"] == jobs.topic and r["published_at"] is None for r in rows)

    events = events_after(db_engine, task)
    assert [e["id"] for e in events] == [r["id"] for r in rows]
    for event in events:
        assert set(event) == BODY_KEYS and event["event"] in EVENTS
        assert event["schema_version"] == SCHEMA_VERSION and event["tenant"] == "acme"
        assert 0.0 <= event["progress"] <= 1.0
    by_name = {(e["event"], e["stage"]): e for e in events}
    assert by_name[("progress", "gpu")]["progress"] == 0.5
    completed = by_name[("completed", "callback")]
    assert completed["progress"] == 1.0 and completed["video_url"] == "https://cdn/v.mp4"
    assert completed["timings"]["queued_at"] and completed["timings"]["started_at"]
    assert by_name[("stage_succeeded", "gpu")]["timings"]["duration_s"] == 0.25
    assert latest_status(db_engine, task)["event"] == "stage_succeeded"
    assert events_after(db_engine, task, events[4]["id"]) == events[5:]


def test_every_kind_of_ending_is_told_with_its_code(jobs: Jobs, db_engine: Engine,
                                                   unique: str) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=5)
    ids = {k: f"{k}-{unique}" for k in ("door", "cycle", "cancel", "expire", "fail", "parent",
                                        "child", "first", "second")}
    jobs.admit(ids["cycle"], depends_on=[ids["cycle"]],
               rejects=((ids["door"], "message.missing_field"),))
    jobs.admit(ids["cancel"], ids["fail"], ids["parent"])
    jobs.admit(ids["expire"], deadline=past)
    jobs.admit(ids["child"], depends_on=[ids["parent"]])
    jobs.admit(ids["first"], ids["second"], ordering_key=f"key-{unique}")

    cancel.cancel(db_engine, [ids["cancel"]])
    with db_engine.begin() as conn:
        assert upkeep.expire(conn, jobs.topic) == [ids["expire"]]
    journal.finish(db_engine, ids["fail"], Status.FAILED, error_code="image.no_face",
                   error_message="no face")
    journal.finish(db_engine, ids["parent"], Status.FAILED, error_code="engine.failed",
                   error_message="boom")  # its dependent fails by trigger
    journal.finish(db_engine, ids["first"], Status.COMPLETED)  # the next of its key runs

    def told(key: str) -> list[tuple[str, str | None]]:
        return [(r["event"], (r["body"]["error"] or {}).get("code"))
                for r in jobs.outbox(ids[key])]

    assert told("door") == [("rejected", "message.missing_field")]
    assert told("cycle") == [("admitted", None), ("rejected", "dependency.cycle")]
    assert told("cancel") == [("admitted", None), ("cancelled", "task.cancelled")]
    assert told("expire") == [("admitted", None), ("expired", "task.deadline")]
    assert told("fail") == [("admitted", None), ("failed", "image.no_face")]
    assert told("child") == [("admitted", None), ("waiting", None),
                             ("failed", "dependency.failed")]
    assert told("first") == [("admitted", None), ("completed", None)]
    assert told("second") == [("admitted", None), ("waiting", None), ("released", None)]


def test_stage_failures_and_retries_carry_their_error(jobs: Jobs, db_engine: Engine,
                                                     unique: str) -> None:
    task = f"retry-{unique}"
    jobs.admit(task)
    with db_engine.begin() as conn:
        pick.pick(conn, jobs.topic, 100)
    lease = leases.acquire(db_engine, task, "preprocess", "w1", 30)
    journal.record(db_engine, task, "preprocess", "started", attempt=1)
    leases.release(db_engine, lease)
    journal.record(db_engine, task, "preprocess", "retrying", attempt=1, duration_s=0.5,
                   detail={"code": "storage.unavailable", "message": "503",
                           "traceback": "Traceback ...", "delay_s": 2.0})
    journal.record(db_engine, task, "preprocess", "skipped", detail={"reason": "held"})
    journal.record(db_engine, task, "callback", "delivery", detail={"status": 200})
    rows = jobs.outbox(task)
    assert [r["event"] for r in rows] == ["admitted", "queued", "running", "stage_started",
                                          "stage_retrying"]
    retry = rows[-1]["body"]
    assert retry["error"] == {"code": "storage.unavailable", "message": "503"}
    assert retry["detail"] == {"delay_s": 2.0}  # no traceback in a public event


def test_progress_is_told_at_most_once_a_second(jobs: Jobs, db_engine: Engine,
                                                unique: str) -> None:
    task = f"progress-{unique}"
    jobs.admit(task)
    with db_engine.begin() as conn:
        pick.pick(conn, jobs.topic, 100)
    lease = leases.acquire(db_engine, task, "gpu", "w1", 30)
    for percent in range(10, 60, 5):
        leases.heartbeat(db_engine, lease, 30, progress=float(percent))
    leases.heartbeat(db_engine, lease, 30, progress=55.0)  # unchanged: nothing
    assert jobs.names(task).count("progress") == 1
    time.sleep(1.05)
    leases.heartbeat(db_engine, lease, 30, progress=70.0)
    progress = [r["body"]["progress"] for r in jobs.outbox(task) if r["event"] == "progress"]
    assert progress == [0.1, 0.7]


def test_a_tasks_next_event_waits_for_the_commit_of_the_one_before(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    """Commit order = id order per task: a writer whose event would get a lower id cannot
    commit after a later one."""
    task = f"order-{unique}"
    jobs.admit(task)
    done = threading.Event()
    with db_engine.connect() as first:
        first.execute(text("UPDATE tasks SET status = 'queued' WHERE task_id = :t"), {"t": task})

        def second() -> None:
            journal.record(db_engine, task, "preprocess", "started")
            done.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not done.wait(0.5), "the second event was written before the first committed"
        first.commit()
    thread.join(10)
    assert done.is_set()
    rows = jobs.outbox(task)
    assert [(r["event"], r["seq"]) for r in rows] == [
        ("admitted", 1), ("queued", 2), ("stage_started", 3)]


def test_concurrent_writers_of_one_task_get_unique_gapless_numbers(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    tasks = [f"race-{i}-{unique}" for i in range(2)]
    jobs.admit(*tasks)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(15):
                task = tasks[(n + i) % 2]
                if i % 5 == 4:
                    with db_engine.begin() as conn:  # a status flip-flop: two events
                        conn.execute(text("UPDATE tasks SET status = CASE status WHEN "
                                          "'received' THEN 'waiting' ELSE 'received' END "
                                          "WHERE task_id = :t"), {"t": task})
                else:
                    journal.record(db_engine, task, "gpu", "started", attempt=i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    for task in tasks:
        seqs = [r["seq"] for r in jobs.outbox(task)]  # in id order
        assert seqs == list(range(1, len(seqs) + 1))
    assert sum(len(jobs.outbox(t)) for t in tasks) == 2 + 6 * 15


def test_prune_keeps_each_tasks_newest_event_and_its_numbering(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    old, fresh = f"old-{unique}", f"fresh-{unique}"
    jobs.admit(old, fresh)
    cancel.cancel(db_engine, [old])
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE status_outbox SET published_at = now() - interval '2 days' "
                          "WHERE topic = :t"), {"t": jobs.topic})
        conn.execute(text("UPDATE status_outbox SET published_at = now() WHERE task_id = :t"),
                     {"t": fresh})
    with db_engine.begin() as conn:
        assert prune(conn, jobs.topic, 3600) == 1
    assert [(r["event"], r["seq"]) for r in jobs.outbox(old)] == [("cancelled", 2)]
    assert [(r["event"], r["seq"]) for r in jobs.outbox(fresh)] == [("admitted", 1)]
    assert latest_status(db_engine, old)["status"] == "cancelled"
    assert latest_status(db_engine, f"missing-{unique}") is None


def test_events_left_unpublished_past_the_limit_are_dropped_from_every_topic(
        jobs: Jobs, db_engine: Engine, unique: str) -> None:
    """A topic no bridge serves any more: another topic's relay drops its events that
    waited past the limit (a task's newest kept), counts them, and leaves fresh and
    published events alone."""
    from prometheus_client import REGISTRY

    from pipeline.status.relay import Relay

    gone = Jobs(db_engine, f"status-gone-{unique}")
    cancelled, admitted, fresh, sent = (f"{n}-{unique}" for n in ("c", "a", "f", "s"))
    gone.admit(cancelled, admitted, fresh, sent)
    cancel.cancel(db_engine, [cancelled, sent])
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE status_outbox SET created_at = now() - interval '8 days' "
                          "WHERE task_id = ANY(:t)"), {"t": [cancelled, admitted, sent]})
        conn.execute(text("UPDATE status_outbox SET published_at = now() - interval '8 days' "
                          "WHERE task_id = :t"), {"t": sent})
    jobs.admit(f"live-{unique}")
    relay = Relay(db_engine, jobs.topic, lambda events: [True] * len(events),
                  unpublished_max_age_s=7 * 86400)

    def expired() -> float:
        return REGISTRY.get_sample_value("sonic_status_expired_total",
                                         {"topic": gone.topic}) or 0.0

    before = expired()
    dropped = relay.expire()
    assert dropped.get(gone.topic) == 1 and jobs.topic not in dropped
    assert expired() - before == 1
    assert [(r["event"], r["seq"]) for r in gone.outbox(cancelled)] == [("cancelled", 2)]
    assert [(r["event"], r["seq"]) for r in gone.outbox(admitted)] == [("admitted", 1)]
    assert [(r["event"], r["seq"]) for r in gone.outbox(fresh)] == [("admitted", 1)]
    assert [r["event"] for r in gone.outbox(sent)] == ["admitted", "cancelled"]
    assert relay.expire().get(gone.topic) is None  # nothing left to drop
    assert latest_status(db_engine, cancelled)["status"] == "cancelled"
