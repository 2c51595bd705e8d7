"""Cancellation from the control topic in every state, on the whole path (Kafka, the
bridge's admission, dispatcher and control consumer, PostgreSQL, the worker pools):

- not dispatched (waiting on a dependency, behind its ordering key, or runnable behind a
  full window): final at once, its callback sent, no stage ever runs;
- queued in Redis (preprocessed, its gpu message waiting): its gpu stage never starts;
- running on the gpu: it stops, its lease is cleared, and the gpu worker takes the next
  job within 2 s;
- completed: "already final", the row unchanged;
- produced while the bridge is down, or before the job itself: applied all the same.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Stack
from tests.e2e.control_flow import BLOCKER_CONFIG, WORK_STAGES, Flow, module_flow
from tests.pipeline.media.helpers import speak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

@pytest.fixture(scope="module")
def flow(e2e: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    yield from module_flow(e2e, tmp_path_factory.mktemp("cancel"))


@pytest.fixture(scope="module")
def long_speech(e2e: Stack) -> Path:
    return speak(e2e.inputs / "cancel-long.wav",
                 "This sentence is long on purpose, so that the gpu stage runs for a while "
                 "and can be cancelled in the middle of it. " * 8)


def work_events(flow: Flow, task_id: str) -> list[tuple[str | None, str]]:
    return [(s, e) for s, e in flow.events(task_id) if s in WORK_STAGES]


def cancelled_callback(flow: Flow, task_id: str) -> dict:
    flow.wait(lambda: flow.settled(task_id), 30, f"{task_id}'s callback")
    hooks = flow.callbacks(task_id)
    assert [h["status"] for h in hooks] == ["cancelled"], hooks
    assert hooks[0]["error"]["code"] == "task.cancelled"
    return hooks[0]


def test_not_dispatched_jobs_are_final_at_once(flow: Flow) -> None:
    never = f"{flow.topic}-never-sent"
    key = f"{flow.topic}-key"
    unknown_dep = flow.job("dep-unknown", depends_on=[never], tenant="t-wait")
    head = flow.job("head", depends_on=[never], ordering_key=key, tenant="t-wait")
    behind = flow.job("behind-key", ordering_key=key, tenant="t-wait")
    on_waiting = flow.job("dep-waiting", depends_on=[head], tenant="t-wait")
    jobs = [unknown_dep, behind, on_waiting]
    flow.wait(lambda: all(flow.status(t) == "waiting" for t in [*jobs, head]), 20,
              "four waiting jobs")
    backlog = "sonic_scheduler_backlog_tenant_jobs"
    flow.wait(lambda: flow.metric(backlog, topic=flow.topic, status="waiting",
                                  tenant="t-wait") == 4, 10, "the waiting backlog gauge")

    sent = flow.cancel(*jobs, reason="the user left")
    flow.wait(lambda: all(flow.status(t) == "cancelled" for t in jobs), 5, "the cancels")
    took = time.monotonic() - sent
    assert took < 2.0, f"cancelled {took:.2f} s after the control message"
    for task_id in jobs:
        row = flow.row(task_id)
        assert (row["error_code"], row["error_message"]) == ("task.cancelled", "the user left")
        cancelled_callback(flow, task_id)
        assert work_events(flow, task_id) == []
        assert ("cancelled" in [e for _, e in flow.events(task_id)])
    assert flow.status(head) == "waiting"  # only what was named
    flow.wait(lambda: flow.metric(backlog, topic=flow.topic, status="waiting",
                                  tenant="t-wait") == 1, 10, "the gauge after the cancels")
    assert flow.metric("sonic_control_commands_total", command="cancel",
                       outcome="cancelled") == 3


def test_queued_running_and_completed(flow: Flow, long_speech: Path) -> None:
    blocker = flow.job("blocker", config=BLOCKER_CONFIG, audio=long_speech, tenant="t-gpu")
    flow.wait(lambda: flow.gpu_holder() == blocker, 120, "the blocker on the gpu")
    queued = flow.job("queued", tenant="t-gpu")
    nxt = flow.job("next", tenant="t-gpu")
    # The window (1 gpu slot x 3) is full: this one stays in the backlog.
    backlog = flow.job("window-full", tenant="t-gpu")

    def preprocessed(task_id: str) -> bool:
        if flow.status(task_id) is None:  # not admitted yet
            return False
        row = flow.row(task_id)
        return row["stage"] == "gpu" and row["lease_owner"] is None

    try:
        flow.wait(lambda: preprocessed(queued) and preprocessed(nxt), 90,
                  "two jobs preprocessed, waiting for the gpu")
    except AssertionError as exc:  # say where each job was, and what it went through
        where = {t: ({k: flow.row(t)[k] for k in ("status", "stage", "lease_owner",
                                                  "attempts", "error_code")}
                     if flow.status(t) else None, flow.events(t))
                 for t in (blocker, queued, nxt, backlog)}
        raise AssertionError(f"{exc}\n{where}") from None
    assert flow.status(backlog) == "received"
    assert flow.gpu_holder() == blocker

    flow.cancel(queued, backlog)
    flow.wait(lambda: flow.status(queued) == flow.status(backlog) == "cancelled", 5,
              "the queued and the backlog job cancelled")

    sent = flow.cancel(blocker)
    freed = flow.wait(lambda: flow.row(blocker)["lease_owner"] is None and time.monotonic(),
                      10, "the blocker's lease cleared", interval_s=0.01)
    taken = flow.wait(lambda: flow.gpu_holder() == nxt and time.monotonic(), 10,
                      "the next job on the gpu", interval_s=0.01)
    print(f"\ncancel of a running gpu stage: lease cleared {freed - sent:.2f} s, next job "
          f"on the gpu {taken - sent:.2f} s after the control message")
    assert freed - sent < 2.0 and taken - sent < 2.0, (freed - sent, taken - sent)

    assert flow.status(blocker) == "cancelled"
    assert ("gpu", "cancelled") in flow.events(blocker)
    row = flow.wait(lambda: flow.settled(nxt), 60, "the next job completed")
    assert row["status"] == "completed"
    for task_id in (blocker, queued, backlog):
        cancelled_callback(flow, task_id)
    # Its gpu message was taken and dropped: the stage never started.
    assert [e for s, e in work_events(flow, queued) if s != "preprocess"] in (
        [], ["skipped"]), work_events(flow, queued)
    assert work_events(flow, backlog) == []

    # Completed: answered "already final", nothing changes.
    before, events = flow.row(nxt), flow.events(nxt)
    finals = flow.metric("sonic_control_commands_total", command="cancel",
                         outcome="already_final") or 0
    flow.cancel(nxt)
    flow.wait(lambda: (flow.metric("sonic_control_commands_total", command="cancel",
                                   outcome="already_final") or 0) == finals + 1, 10,
              "the already-final answer")
    assert flow.row(nxt) == before and flow.events(nxt) == events
    assert [h["status"] for h in flow.callbacks(nxt)] == ["completed"]


def test_cancel_survives_a_bridge_restart_and_may_come_first(flow: Flow) -> None:
    waits = flow.job("waits", depends_on=[f"{flow.topic}-never-sent-2"])
    flow.wait(lambda: flow.status(waits) == "waiting", 20, "the waiting job")
    flow.stop_bridge()
    early = f"{flow.topic}-early"  # its job is produced after the cancel
    flow.cancel(waits, early, reason="sent while the bridge was down")
    time.sleep(0.5)
    assert flow.status(waits) == "waiting" and flow.status(early) is None

    flow.start_bridge()
    flow.wait(lambda: flow.status(waits) == flow.status(early) == "cancelled", 10,
              "both cancels applied after the restart")
    cancelled_callback(flow, waits)
    assert flow.row(waits)["error_message"] == "sent while the bridge was down"

    flow.job("early")
    flow.wait(lambda: ("duplicate" in [e for _, e in flow.events(early)]), 20,
              "the early job's message met its cancel")
    time.sleep(1.0)  # a dispatch, were there one, would be under way by now
    row = flow.row(early)
    assert (row["status"], row["error_code"]) == ("cancelled", "task.cancelled")
    assert row["queued_at"] is None  # never dispatched (the callback stage may set started_at)
    assert work_events(flow, early) == []
    # Its callback, to the URL its message named (unknown when the cancel came), once.
    hook = cancelled_callback(flow, early)
    assert hook["task_id"] == early
    assert flow.row(early)["error_message"] == "sent while the bridge was down"
