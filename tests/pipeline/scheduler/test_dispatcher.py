"""The dispatcher loop on the real PostgreSQL: the window ahead of the gpu, one active
dispatcher per topic, upkeep (expired jobs and their callbacks), publish failures."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from pipeline.scheduler.dispatcher import Dispatcher
from tests.pipeline.scheduler.conftest import Jobs

pytestmark = pytest.mark.integration


def make(jobs: Jobs, sent: list, window: int = 3, **kw: object) -> Dispatcher:
    return Dispatcher(jobs.db, jobs.topic, lambda *a: sent.append(a), window=window,
                      tenant_cap=1000, dependency_wait_s=3600, idle_s=0.02, **kw)


def test_the_window_counts_jobs_ahead_of_the_gpu_only(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-{i}"} for i in range(10)))
    sent: list[tuple[str, int, str]] = []
    dispatcher = make(jobs, sent)
    assert dispatcher.once() == 3 and len(sent) == 3
    assert dispatcher.once() == 0  # full: three queued at preprocess
    # One job moves past the gpu stage: its room is free again.
    with jobs.db.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'running', stage = 'encode' "
                          "WHERE task_id = :t"), {"t": sent[0][0]})
    assert dispatcher.once() == 1
    assert [s[2] for s in sent] == ["preprocess"] * 4
    assert sum(1 for s in jobs.statuses().values() if s == "queued") == 3


def test_a_failed_publish_leaves_the_job_runnable(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-a"})

    def broken(*_: object) -> None:
        raise ConnectionError("redis down")

    dispatcher = Dispatcher(jobs.db, t, broken, window=3, tenant_cap=1000,
                            dependency_wait_s=3600)
    with pytest.raises(ConnectionError):
        dispatcher.once()
    assert jobs.status(f"{t}-a") == "received"


def test_one_dispatcher_per_topic_is_active_the_other_stands_by(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit(*({"task_id": f"{t}-{i}"} for i in range(6)))
    sent: list[tuple[str, int, str]] = []
    first, second = make(jobs, sent, window=100), make(jobs, sent, window=100)
    stop = threading.Event()
    threads = [threading.Thread(target=d.run, args=(stop,), daemon=True)
               for d in (first, second)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(sent) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert [first.active, second.active].count(True) == 1
    assert sorted(s[0] for s in sent) == sorted(f"{t}-{i}" for i in range(6))  # once each
    stop.set()
    for thread in threads:
        thread.join(timeout=5)
    assert not first.active and not second.active  # the lock is given back on the way out
    # With the lock free, a standby becomes active at its next try.
    later = make(jobs, sent, window=100)
    assert later.lock.hold() and later.active
    later.lock.drop()


def test_upkeep_expires_and_sends_their_callbacks(jobs: Jobs) -> None:
    t = jobs.topic
    jobs.admit({"task_id": f"{t}-late", "deadline": "2020-01-01T00:00:00+00:00",
                "callback_url": "http://127.0.0.1:9/hook"})
    sent: list[tuple[str, int, str]] = []
    assert make(jobs, sent).once() == 0
    assert sent == [(f"{t}-late", 5, "callback")]
    assert jobs.status(f"{t}-late") == "expired"
