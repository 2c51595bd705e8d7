"""Waking the dispatcher on the real PostgreSQL: a notification (admission, a stage leaving
the gpu, a job ending or cancelled) wakes an idle dispatcher within milliseconds; a notification lost,
rolled back or for another topic leaves the job to the poll, which still picks it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.scheduler import cancel as cancelling
from pipeline.scheduler.dispatcher import Dispatcher
from pipeline.scheduler.settle import settle
from pipeline.state import journal, leases, wake
from pipeline.state.status import Status
from tests.pipeline.scheduler.conftest import Jobs

pytestmark = pytest.mark.integration

#: The poll of the dispatchers here: far longer than a wake-up may take.
SLOW_POLL_S = 5.0
#: A wake-up's bound on a loaded two-core box (it takes a few ms at idle).
WOKEN_WITHIN_S = 0.5


class Running:
    """A dispatcher on its own thread; ``sent`` gets (task_id, priority, stage, at)."""

    def __init__(self, jobs: Jobs, idle_s: float, window: int = 100) -> None:
        self.sent: list[tuple[str, int, str, float]] = []
        self.dispatcher = Dispatcher(
            jobs.db, jobs.topic, lambda *a: self.sent.append((*a, time.monotonic())),
            window=window, tenant_cap=1000, dependency_wait_s=3600, idle_s=idle_s,
            upkeep_s=3600, express=0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.dispatcher.run, args=(self.stop,),
                                       daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.dispatcher.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.dispatcher.active
        time.sleep(0.2)  # past its first pass: now idle, waiting
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)

    def sent_at(self, task_id: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sent in self.sent:
                if sent[0] == task_id:
                    return sent[3]
            time.sleep(0.002)
        return None


def admit(jobs: Jobs, task_id: str, *, notify: bool = True, rollback: bool = False,
          topic: str | None = None, **columns: Any) -> float:
    """Admit one job as the bridge does (settled, its notification in the transaction);
    the monotonic time of the commit."""
    values = {"task_id": task_id, "kafka_topic": jobs.topic, **columns}
    with jobs.db.connect() as conn:
        conn.execute(text(f"INSERT INTO tasks ({', '.join(values)}) "
                          f"VALUES ({', '.join(':' + k for k in values)})"), values)
        cur = conn.connection.driver_connection.cursor()
        settle(cur, [task_id])
        if notify:
            wake.notify(cur, [topic or jobs.topic])
        if rollback:
            conn.rollback()
        else:
            conn.commit()
        return time.monotonic()


@pytest.mark.parametrize("topics", [["own"], ["other", "own"], ["own", "own"]])
def test_an_admission_wakes_the_idle_dispatcher_at_once(jobs: Jobs, topics: list[str]) -> None:
    with Running(jobs, SLOW_POLL_S) as run:
        t = jobs.topic
        with jobs.db.connect() as conn:
            conn.execute(text("INSERT INTO tasks (task_id, kafka_topic) VALUES (:t, :topic)"),
                         {"t": f"{t}-a", "topic": t})
            names = [t if name == "own" else f"{t}-{name}" for name in topics]
            wake.notify(conn.connection.driver_connection.cursor(), names)
            conn.commit()
            committed = time.monotonic()
        at = run.sent_at(f"{t}-a", WOKEN_WITHIN_S)
        assert at is not None, "not woken by the notification"
        assert at - committed < WOKEN_WITHIN_S


def _sent_and_claimed(jobs: Jobs, run: Running, task_id: str, stage: str,
                      **columns: Any) -> leases.Lease:
    """Admit ``task_id``, let the dispatcher send it, then claim ``stage`` of it."""
    admit(jobs, task_id, **columns)
    assert run.sent_at(task_id, 5) is not None
    lease = leases.acquire(jobs.db, task_id, stage, f"w-{task_id}", 60)
    assert isinstance(lease, leases.Lease)
    return lease


@pytest.mark.parametrize("frees", ["gpu_done", "failed_on_gpu", "failed_in_preprocess",
                                   "key_released", "cancelled_on_gpu", "key_cancelled"])
def test_a_job_that_may_go_now_wakes_the_dispatcher(jobs: Jobs, frees: str) -> None:
    """A full window gets a place (the gpu stage done, a job failed or cancelled before
    it), or a job waiting for its ordering key is released (the one before it completed
    or was cancelled)."""
    t = jobs.topic
    key = {"ordering_key": f"{t}-k"} if frees.startswith("key_") else {}
    stage = {"key_released": "upload", "key_cancelled": "encode",
             "failed_in_preprocess": "preprocess"}.get(frees, "gpu")
    with Running(jobs, SLOW_POLL_S, window=100 if key else 1) as run:
        lease = _sent_and_claimed(jobs, run, f"{t}-first", stage, **key)
        admit(jobs, f"{t}-next", notify=False, **key)  # it must wait
        time.sleep(0.3)
        assert run.sent_at(f"{t}-next", 0) is None
        started = time.monotonic()
        if frees == "gpu_done":
            assert leases.advance(jobs.db, lease, "encode", succeeded_s=0.1)
        elif frees == "key_released":
            assert leases.advance(jobs.db, lease, "callback", status="completed")
        elif frees in ("cancelled_on_gpu", "key_cancelled"):
            assert cancelling.cancel(jobs.db, [lease.task_id]) == {
                lease.task_id: "cancelled_running"}
        else:
            assert journal.finish(jobs.db, lease.task_id, Status.FAILED, owner=lease.owner,
                                  error_code="engine.error", error_message="boom")
        at = run.sent_at(f"{t}-next", WOKEN_WITHIN_S)
        assert at is not None, f"not woken ({frees})"
        assert at - started < WOKEN_WITHIN_S


def test_a_stage_inside_the_window_wakes_nobody(jobs: Jobs, db_engine: Engine) -> None:
    """Preprocess done (still ahead of the gpu): nothing freed, no notification."""
    t = jobs.topic
    with _listening(db_engine) as conn:
        jobs.admit({"task_id": f"{t}-a"})
        lease = leases.acquire(db_engine, f"{t}-a", "preprocess", "w-a", 60)
        assert isinstance(lease, leases.Lease)
        assert leases.advance(db_engine, lease, "gpu", succeeded_s=0.1)
        assert not wake.wait(conn, t, 0.3)
        lease = leases.acquire(db_engine, f"{t}-a", "gpu", "w-b", 60)
        assert isinstance(lease, leases.Lease)
        assert leases.advance(db_engine, lease, "encode", succeeded_s=0.1)
        assert wake.wait(conn, t, 1.0)


@pytest.mark.parametrize("lost", ["none_sent", "rolled_back", "other_topic"])
def test_a_lost_notification_is_covered_by_the_poll(jobs: Jobs, lost: str) -> None:
    poll_s = 0.6
    t = jobs.topic
    with Running(jobs, poll_s) as run:
        if lost == "rolled_back":  # the job is not there, so nor is its notification
            admit(jobs, f"{t}-gone", rollback=True)
            admitted = admit(jobs, f"{t}-a", notify=False)
        elif lost == "other_topic":
            admitted = admit(jobs, f"{t}-a", topic=f"{t}-elsewhere")
        else:
            admitted = admit(jobs, f"{t}-a", notify=False)
        at = run.sent_at(f"{t}-a", poll_s + 2)
        assert at is not None, "the poll did not pick it"
        # Not woken: the poll picked it, up to one poll later (not at once, as woken).
        assert 0.05 < at - admitted < poll_s + 1
        assert run.sent_at(f"{t}-gone", 0) is None


def test_a_dispatcher_whose_session_died_listens_again(jobs: Jobs, db_engine: Engine) -> None:
    """The lock's session killed: the job admitted meanwhile is picked once the lock is
    taken again (its notification went to nobody), and later ones wake it again."""
    t = jobs.topic
    with Running(jobs, SLOW_POLL_S) as run:
        conn = run.dispatcher.lock.connection
        assert conn is not None
        # Read from the driver, not by a query: the dispatcher's thread owns the session.
        pid = conn.connection.driver_connection.get_backend_pid()
        with db_engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        admit(jobs, f"{t}-meanwhile")
        assert run.sent_at(f"{t}-meanwhile", 10) is not None
        time.sleep(0.3)  # active again and idle
        committed = admit(jobs, f"{t}-after")
        at = run.sent_at(f"{t}-after", WOKEN_WITHIN_S)
        assert at is not None and at - committed < WOKEN_WITHIN_S


class _listening:
    """A session listening for wake-ups (as the dispatcher's lock session does)."""

    def __init__(self, db_engine: Engine) -> None:
        self.conn = db_engine.connect()

    def __enter__(self) -> Any:
        self.conn.execution_options(isolation_level="AUTOCOMMIT")
        wake.listen(self.conn)
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
