"""Deadlines on the whole path: while the gpu is busy (a window of one job), jobs whose
``deadline`` or ``ttl_s`` passes before their turn never start: ``expired`` with
``task.deadline``, their callback sent, no stage run, no gpu-seconds for their tenant;
the scheduler's metrics after the run (gpu seconds per tenant, dispatch latency, backlog).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.e2e.conftest import Stack
from tests.e2e.control_flow import BLOCKER_CONFIG, WORK_STAGES, Flow, module_flow
from tests.pipeline.media.helpers import speak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

@pytest.fixture(scope="module")
def flow(e2e: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    # A window of one: while the blocker renders, nothing else is dispatched.
    yield from module_flow(e2e, tmp_path_factory.mktemp("deadlines"), dispatch_lead=1)


@pytest.fixture(scope="module")
def long_speech(e2e: Stack) -> Path:
    return speak(e2e.inputs / "deadline-long.wav",
                 "This sentence is long on purpose, so that the gpu stays busy while other "
                 "jobs wait for it and run out of time. " * 8)


def iso(delta_s: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(seconds=delta_s)).isoformat()


def test_expired_jobs_never_start(flow: Flow, long_speech: Path) -> None:
    blocker = flow.job("blocker", config=BLOCKER_CONFIG, audio=long_speech, tenant="t-busy")
    flow.wait(lambda: flow.gpu_holder() == blocker, 120, "the blocker on the gpu")
    # Several kinds: a deadline already past, one a second ahead, a tiny and a short
    # ttl_s, priority 0, and one waiting on a dependency when its time runs out.
    jobs = {
        "past": flow.job("deadline-past", deadline=iso(-60), tenant="t-past"),
        "soon": flow.job("deadline-soon", deadline=iso(1.0), tenant="t-soon"),
        "ttl-tiny": flow.job("ttl-tiny", ttl_s=0.2, tenant="t-tiny"),
        "ttl-urgent": flow.job("ttl-urgent", ttl_s=1.0, priority=0, tenant="t-urgent"),
        "ttl-waiting": flow.job("ttl-waiting", ttl_s=1.0, depends_on=[blocker],
                                tenant="t-dep"),
    }
    flow.wait(lambda: all(flow.status(t) == "expired" for t in jobs.values()), 15,
              "every job expired")
    assert flow.gpu_holder() == blocker  # still busy: they expired waiting for it
    for kind, task_id in jobs.items():
        row = flow.row(task_id)
        assert row["error_code"] == "task.deadline", (kind, row)
        assert "passed before it started" in row["error_message"], (kind, row)
        assert row["queued_at"] is None, (kind, row)  # never dispatched
        assert [s for s, _ in flow.events(task_id) if s in WORK_STAGES] == [], kind
        flow.wait(lambda: flow.settled(task_id), 30, f"the {kind} job's callback")
        hooks = flow.callbacks(task_id)
        assert [h["status"] for h in hooks] == ["expired"], (kind, hooks)
        assert hooks[0]["error"]["code"] == "task.deadline"
    # The gpu is freed for what comes next.
    flow.cancel(blocker)
    flow.wait(lambda: flow.row(blocker)["lease_owner"] is None, 10, "the blocker stopped")

    # The scheduler's metrics on the bridge's port, after the run.
    assert (flow.metric("sonic_expired_total", topic=flow.topic) or 0) >= len(jobs)
    with flow.stack.db_engine.connect() as conn:
        spent = conn.execute(text(
            "SELECT sum(duration_s) FROM task_events WHERE task_id = :t AND stage = 'gpu' "
            "AND duration_s IS NOT NULL"), {"t": blocker}).scalar_one()
    assert spent and spent > 0
    gpu = "sonic_tenant_gpu_seconds_total"
    flow.wait(lambda: flow.metric(gpu, topic=flow.topic, tenant="t-busy"), 10,
              "the blocker's gpu seconds counted")
    assert flow.metric(gpu, topic=flow.topic, tenant="t-busy") == pytest.approx(spent)
    for tenant in ("t-past", "t-soon", "t-tiny", "t-urgent", "t-dep"):
        assert not flow.metric(gpu, topic=flow.topic, tenant=tenant), tenant
    # One job dispatched (the blocker), after it waited less than a second.
    assert flow.metric("sonic_dispatch_latency_seconds_count", topic=flow.topic) == 1
    assert flow.metric("sonic_dispatch_latency_seconds_sum", topic=flow.topic) < 1.0
    assert flow.metric("sonic_scheduler_oldest_runnable_seconds", topic=flow.topic) == 0
    assert not flow.metric("sonic_scheduler_backlog_tenant_jobs", topic=flow.topic,
                           status="runnable", tenant="t-past")


def test_a_deadline_that_holds_lets_the_job_run(flow: Flow) -> None:
    """The other side: a deadline well ahead, and a ttl_s that is long enough, run."""
    ids = [flow.job("deadline-ahead", deadline=iso(600), tenant="t-ok"),
           flow.job("ttl-long", ttl_s=600, tenant="t-ok")]
    started = time.monotonic()
    for task_id in ids:
        row = flow.wait(lambda: flow.settled(task_id), 90, f"{task_id} completed")
        assert (row["status"], row["error_code"]) == ("completed", None)
    assert time.monotonic() - started < 90
