"""The scheduler's SQL on the real PostgreSQL: ordering keys, dependencies, priorities with
aging, tenant fairness, deadlines, cancellation and the trigger-kept counts."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from pipeline.scheduler import cancel as cancelling
from pipeline.scheduler import pick, upkeep
from tests.pipeline.scheduler.conftest import Jobs

pytestmark = pytest.mark.integration


def picks(jobs: Jobs, n: int, cap: int = 1000) -> list[pick.Picked]:
    out = []
    for _ in range(n):
        with jobs.db.begin() as conn:
            got = pick.pick(conn, jobs.topic, cap)
        if got is None:
            break
        out.append(got)
    return out


def test_one_job_per_ordering_key_at_a_time_in_admission_order(jobs: Jobs) -> None:
    t = jobs.topic
    rng = random.Random(7)
    order = [(key, i) for key in "xyz" for i in range(20)]
    # Interleaved across keys, in order within each key (as offsets within a partition).
    interleaved = sorted(order, key=lambda ki: (ki[1], rng.random()))
    jobs.admit(*({"task_id": f"{t}-{k}{i:02d}", "ordering_key": f"{t}-{k}"}
                 for k, i in interleaved))
    started: dict[str, list[int]] = {k: [] for k in "xyz"}
    for _ in range(60):
        got = picks(jobs, 10)
        assert len(got) <= 3  # never two of one key at once
        assert len({g.task_id.rsplit("-", 1)[1][0] for g in got}) == len(got)
        for g in got:
            key, index = g.task_id.rsplit("-", 1)[1][0], int(g.task_id[-2:])
            started[key].append(index)
            jobs.finish(g.task_id)
        if not got:
            break
    assert started == {k: list(range(20)) for k in "xyz"}


def test_a_diamond_runs_in_dependency_order(jobs: Jobs) -> None:
    t = jobs.topic
    a, b, c, d = (f"{t}-{n}" for n in "abcd")
    out = jobs.admit({"task_id": a}, {"task_id": b, "depends_on": [a]},
                     {"task_id": c, "depends_on": [a]}, {"task_id": d, "depends_on": [b, c]})
    assert sorted(out["waiting"]) == sorted([b, c, d])
    assert [p.task_id for p in picks(jobs, 5)] == [a]
    jobs.finish(a)
    assert sorted(p.task_id for p in picks(jobs, 5)) == sorted([b, c])
    jobs.finish(b)
    assert jobs.status(d) == "waiting"
    jobs.finish(c)
    assert [p.task_id for p in picks(jobs, 5)] == [d]


def test_a_failed_dependency_fails_its_dependents_with_the_code(jobs: Jobs) -> None:
    t = jobs.topic
    a, b, c = (f"{t}-{n}" for n in "abc")
    jobs.admit({"task_id": a}, {"task_id": b, "depends_on": [a]},
               {"task_id": c, "depends_on": [b]})
    jobs.finish(a, "failed", "image.no_face")
    for job in (b, c):  # the whole chain, at once (a trigger, not a sweep)
        row = jobs.row(job)
        assert (row["status"], row["error_code"]) == ("failed", "dependency.failed")
    assert a in jobs.row(b)["error_message"] and "image.no_face" in jobs.row(b)["error_message"]
    # Admitted after its dependency failed: failed at admission.
    late = f"{t}-late"
    assert jobs.admit({"task_id": late, "depends_on": [a]})["failed"] == [late]


def test_a_cycle_is_rejected_at_admission(jobs: Jobs) -> None:
    t = jobs.topic
    x, y, z = (f"{t}-{n}" for n in "xyz")
    jobs.admit({"task_id": x, "depends_on": [y]})  # y unknown yet: x waits
    assert jobs.status(x) == "waiting"
    out = jobs.admit({"task_id": y, "depends_on": [x]})
    assert out["rejected"] == [y]
    assert (jobs.row(y)["status"], jobs.row(y)["error_code"]) == ("rejected", "dependency.cycle")
    assert jobs.row(x)["error_code"] == "dependency.failed"  # it waited on the rejected one
    assert jobs.admit({"task_id": z, "depends_on": [z]})["rejected"] == [z]  # itself


def test_a_high_priority_job_admitted_last_is_picked_first(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-low{i:02d}", "priority": 9} for i in range(50)))
    jobs.admit({"task_id": f"{t}-urgent", "priority": 0})
    assert picks(jobs, 1)[0].task_id == f"{t}-urgent"


def test_aging_lets_an_old_low_priority_job_go_first(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-old", "priority": 9,
                "received_at": "2026-01-01T00:00:00+00:00"})
    jobs.admit({"task_id": f"{t}-new", "priority": 0})
    assert [p.task_id for p in picks(jobs, 2)] == [f"{t}-old", f"{t}-new"]


def test_a_burst_of_one_tenant_does_not_starve_another(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-a{i:03d}", "tenant": "a"} for i in range(500)))
    jobs.admit(*({"task_id": f"{t}-b{i}", "tenant": "b"} for i in range(5)))
    got = [p.tenant for p in picks(jobs, 10)]
    # Least work in flight first: b's five jobs within the first ten picks.
    assert got.count("b") == 5 and got.index("b") <= 1
    # A tenant's cap holds however much it has waiting.
    assert all(p.tenant == "a" for p in picks(jobs, 20, cap=10)) is True
    assert jobs.counts()["a"][2] == 10


def test_weights_share_the_slots(jobs: Jobs) -> None:
    t = jobs.topic
    with jobs.db.begin() as conn:
        pick.set_weights(conn, t, {"heavy": 3.0})
    jobs.admit(*({"task_id": f"{t}-h{i:02d}", "tenant": "heavy"} for i in range(40)))
    jobs.admit(*({"task_id": f"{t}-l{i:02d}", "tenant": "light"} for i in range(40)))
    got = [p.tenant for p in picks(jobs, 20)]
    assert got.count("heavy") == 15 and got.count("light") == 5


def test_an_expired_job_is_never_picked_and_is_owed_its_callback(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-late", "deadline": "2020-01-01T00:00:00+00:00",
                "callback_url": "http://127.0.0.1:9/hook"},
               {"task_id": f"{t}-quiet", "deadline": "2020-01-01T00:00:00+00:00"})
    assert picks(jobs, 5) == []
    with jobs.db.begin() as conn:
        assert sorted(upkeep.expire(conn, t)) == [f"{t}-late", f"{t}-quiet"]
        owed = upkeep.owed_callbacks(conn, t)
    assert owed == [(f"{t}-late", 5)]  # the one with a URL; the other is settled 'none'
    row = jobs.row(f"{t}-late")
    assert (row["status"], row["error_code"], row["callback_status"]) == (
        "expired", "task.deadline", "queued")
    assert jobs.row(f"{t}-quiet")["callback_status"] == "none"


def test_cancel_in_each_state(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-waiting", "ordering_key": f"{t}-k"},
               {"task_id": f"{t}-next", "ordering_key": f"{t}-k"},
               {"task_id": f"{t}-done"})
    jobs.finish(f"{t}-done")
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET lease_owner = 'w1' WHERE task_id = :t"),
                     {"t": f"{t}-waiting"})
    out = cancelling.cancel(jobs.db, [f"{t}-waiting", f"{t}-next", f"{t}-done", f"{t}-nope"])
    assert out == {f"{t}-waiting": "cancelled_running", f"{t}-next": "cancelled",
                   f"{t}-done": "already final: completed", f"{t}-nope": "unknown"}
    assert jobs.status(f"{t}-done") == "completed"


@pytest.mark.parametrize("length", [0, 1, 499, 500, 501, 20_000])
def test_a_cancel_reason_is_kept_to_500_characters_admitted_or_ahead(jobs: Jobs,
                                                                     length: int) -> None:
    """Whoever cancels (control topic, CLI): the row, its event and the tombstone of an
    id not admitted yet keep at most 500 characters; an empty reason is the default."""
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-in"})
    reason = ("why " * 5001)[:length]
    kept = reason[:500] or cancelling.DEFAULT_REASON
    out = cancelling.cancel_ahead(jobs.db, t, [f"{t}-in", f"{t}-ahead"], reason)
    assert out == {f"{t}-in": "cancelled", f"{t}-ahead": "cancelled_before_admission"}
    for task_id in (f"{t}-in", f"{t}-ahead"):
        assert jobs.row(task_id)["error_message"] == kept
    with jobs.db.connect() as conn:
        detail = conn.execute(text("SELECT detail FROM task_events WHERE task_id = :t AND "
                                   "event = 'cancelled'"), {"t": f"{t}-in"}).scalar_one()
    assert detail["reason"] == kept


def test_a_timeline_shows_the_dispatcher_s_changes(jobs: Jobs) -> None:
    """``sonic-pipeline events``: expired, queued and waiting are told by the status outbox
    only; the timeline merges them in time order, marked with their source."""
    from pipeline.console import jobs as timeline

    t = jobs.topic
    jobs.admit({"task_id": f"{t}-late", "deadline": "2020-01-01T00:00:00+00:00"},
               {"task_id": f"{t}-first", "ordering_key": f"{t}-k"},
               {"task_id": f"{t}-second", "ordering_key": f"{t}-k"})
    with jobs.db.begin() as conn:
        assert upkeep.expire(conn, t) == [f"{t}-late"]
    assert [p.task_id for p in picks(jobs, 5)] == [f"{t}-first"]
    with jobs.db.connect() as conn:
        late, first, second = (timeline.events(conn, f"{t}-{n}")
                               for n in ("late", "first", "second"))
    assert [(e["source"], e["event"], e["detail"].get("code")) for e in late] == [
        ("status_outbox", "expired", "task.deadline")]
    assert [(e["event"], e["stage"]) for e in first] == [("queued", "preprocess")]
    assert [e["event"] for e in second] == ["waiting"]


def test_the_trigger_counts_match_the_rows(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-{i:02d}", "tenant": f"t{i % 3}",
                  "ordering_key": f"{t}-k{i % 4}"} for i in range(30)))
    for p in picks(jobs, 7):
        jobs.finish(p.task_id, random.choice(["completed", "failed"]))
    picks(jobs, 3)
    cancelling.cancel(jobs.db, [f"{t}-{i:02d}" for i in range(0, 30, 5)])
    assert jobs.counts() == jobs.true_counts() | {
        k: (0, 0, 0) for k in jobs.counts() if k not in jobs.true_counts()}


def test_a_rejected_message_with_a_callback_url_is_owed_its_callback(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-bad", "status": "rejected", "error_code": "message.out_of_range",
                "callback_url": "http://127.0.0.1:9/hook", "finished_at": "2026-01-01T00:00:00Z"},
               {"task_id": f"{t}-mute", "status": "rejected", "error_code": "message.wrong_type",
                "finished_at": "2026-01-01T00:00:00Z"})
    with jobs.db.begin() as conn:
        assert upkeep.owed_callbacks(conn, t) == [(f"{t}-bad", 5)]
        assert upkeep.owed_callbacks(conn, t) == []  # once
    assert jobs.row(f"{t}-bad")["callback_status"] == "queued"
    assert jobs.row(f"{t}-mute")["callback_status"] is None
