"""On the real PostgreSQL: a job that must go before the full window's waiting jobs overtakes
them (priority with aging, a tenant's turn), within the extra places only; a dependency
refused at the door after its dependents were admitted fails them at the next upkeep."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from pipeline.scheduler.dispatcher import Dispatcher
from tests.pipeline.scheduler.conftest import Jobs

pytestmark = pytest.mark.integration


def make(jobs: Jobs, sent: list, window: int = 3, express: int = 1) -> Dispatcher:
    return Dispatcher(jobs.db, jobs.topic, lambda *a: sent.append(a), window=window,
                      tenant_cap=1000, dependency_wait_s=3600, idle_s=0.02, express=express)


def _on_gpu(jobs: Jobs, task_id: str) -> None:
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'running', stage = 'gpu', "
                          "lease_owner = 'w', lease_stage = 'gpu' WHERE task_id = :t"),
                     {"t": task_id})


def test_a_higher_priority_overtakes_the_window_once_per_extra_place(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-low{i}", "priority": 9} for i in range(6)))
    sent: list[tuple[str, int, str]] = []
    dispatcher = make(jobs, sent)
    assert dispatcher.once() == 3  # the window; the next low job does not overtake
    assert dispatcher.once() == 0
    jobs.admit({"task_id": f"{t}-urgent", "priority": 0},
               {"task_id": f"{t}-urgent2", "priority": 0})
    assert dispatcher.once() == 1  # one extra place: the second waits for room
    assert sent[-1] == (f"{t}-urgent", 0, "preprocess")
    assert dispatcher.once() == 0 and jobs.status(f"{t}-urgent2") == "received"


def test_a_job_on_the_gpu_is_not_overtaken_nor_an_aged_one(jobs: Jobs) -> None:
    t = jobs.topic
    old = datetime.now(timezone.utc) - timedelta(minutes=10)
    # Aged: priority 9 received 10 minutes ago ranks before priority 0 received now.
    jobs.admit(*({"task_id": f"{t}-old{i}", "priority": 9, "received_at": old}
                 for i in range(2)), {"task_id": f"{t}-gpu", "priority": 9})
    sent: list[tuple[str, int, str]] = []
    dispatcher = make(jobs, sent)
    assert dispatcher.once() == 3
    jobs.admit({"task_id": f"{t}-urgent", "priority": 0})
    _on_gpu(jobs, f"{t}-gpu")
    assert dispatcher.once() == 0, sent  # the ones waiting are aged past priority 0
    assert jobs.status(f"{t}-urgent") == "received"


def test_a_tenant_with_nothing_ahead_of_the_gpu_takes_the_next_place(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-a{i}", "tenant": "a"} for i in range(6)))
    sent: list[tuple[str, int, str]] = []
    dispatcher = make(jobs, sent)
    assert dispatcher.once() == 3
    jobs.admit(*({"task_id": f"{t}-b{i}", "tenant": "b"} for i in range(3)))
    # b goes first at one Redis step above a's waiting jobs (5 -> 4), once.
    assert dispatcher.once() == 1
    assert sent[-1][0].startswith(f"{t}-b") and sent[-1][1:] == (4, "preprocess")
    assert dispatcher.once() == 0


def test_no_extra_place_means_no_overtaking(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-low{i}", "priority": 9} for i in range(4)))
    sent: list[tuple[str, int, str]] = []
    dispatcher = make(jobs, sent, express=0)
    assert dispatcher.once() == 3
    jobs.admit({"task_id": f"{t}-urgent", "priority": 0})
    assert dispatcher.once() == 0


def test_a_dependency_refused_after_its_dependents_fails_them(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-d1", "depends_on": [f"{t}-x"]},
               {"task_id": f"{t}-d2", "depends_on": [f"{t}-x", f"{t}-ok"]},
               {"task_id": f"{t}-ok"})
    # The door refuses x: its row is inserted final, which fires no trigger.
    with jobs.db.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, kafka_topic, status, error_code, "
                          "finished_at) VALUES (:t, :topic, 'rejected', "
                          "'message.out_of_range', now())"),
                     {"t": f"{t}-x", "topic": t})
    make(jobs, []).upkeep()
    for task_id in (f"{t}-d1", f"{t}-d2"):
        row = jobs.row(task_id)
        assert (row["status"], row["error_code"]) == ("failed", "dependency.failed"), row
        assert f"{t}-x" in row["error_message"] and "rejected" in row["error_message"]
    assert jobs.status(f"{t}-ok") == "received"
