"""Stage faults on real workers: an unexpected exception fails the job at once with a code;
a gpu worker whose job is taken away or cancelled stops within a heartbeat and serves the
next job; a render past its gpu budget ends with stage.timeout."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from pipeline.state import journal
from pipeline.state.status import Status
from tests.e2e.conftest import Stack
from tests.pipeline.media.helpers import speak

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: A render this size takes far longer than the tests wait (2000 frames at 768x768).
LONG = {"min_resolution": 768, "seed": 5}
#: Budget settings of the gpu worker in the budget tests: 2 s + 0.05 s per audio second.
BUDGET_BASE_S, BUDGET_PER_AUDIO_S = 2.0, 0.05


@pytest.fixture(scope="module")
def long_speech(e2e: Stack) -> Path:
    """About 80 s of speech as 16 kHz mono WAV (small enough for the e2e input cap)."""
    out = e2e.inputs / "long-speech.wav"
    if not out.exists():
        raw = speak(e2e.inputs / "long-raw.wav", "This sentence is long on purpose, so that "
                    "the render takes a long while on any machine. " * 16, speed=150)
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(raw), "-ar", "16000",
                        "-ac", "1", str(out)], check=True)
    return out


def _audio_s(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["format"]["duration"])


def _until(what: Callable[[], Any], timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = what()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(message)


def _rendering(stack: Stack, task_id: str) -> bool:
    """The gpu stage holds its lease and the engine has reported frames."""
    row = stack.row(task_id)
    return row["lease_stage"] == "gpu" and (row["progress"] or 0) > 10.5


def _event_at(stack: Stack, task_id: str, stage: str, event: str) -> float | None:
    with stack.db_engine.connect() as conn:
        at = conn.execute(text(
            "SELECT extract(epoch FROM min(at)) FROM task_events WHERE task_id = :t "
            "AND stage = :s AND event = :e"), {"t": task_id, "s": stage, "e": event}).scalar()
    return float(at) if at is not None else None


def _now(stack: Stack) -> float:
    with stack.db_engine.connect() as conn:
        return float(conn.execute(text("SELECT extract(epoch FROM clock_timestamp())")).scalar())


@pytest.mark.parametrize("how", ["lease_taken", "cancelled"])
def test_a_gpu_worker_that_loses_its_job_stops_within_a_heartbeat_and_serves_the_next(
        stack_e2e: Stack, long_speech: Path, unique: str, how: str) -> None:
    long_id = stack_e2e.submit(f"stop-{how}-{unique}", audio=str(long_speech), config=LONG)
    _until(lambda: _rendering(stack_e2e, long_id), 120, f"{long_id} never rendered")
    # The next job waits in the gpu queue behind the long one.
    next_id = stack_e2e.submit(f"after-{how}-{unique}")
    _until(lambda: stack_e2e.row(next_id)["stage"] == "gpu", 120, f"{next_id} not at gpu")
    progress = stack_e2e.row(long_id)["progress"]

    taken = _now(stack_e2e)
    if how == "lease_taken":
        with stack_e2e.db_engine.begin() as conn:
            conn.execute(text("UPDATE tasks SET lease_owner = 'elsewhere', "
                              "lease_expires_at = now() + interval '1 hour' "
                              "WHERE task_id = :t"), {"t": long_id})
        event = "lease_lost"
    else:
        journal.finish(stack_e2e.db_engine, long_id, Status.CANCELLED,
                       error_code="task.cancelled", error_message="cancelled by the test")
        event = "cancelled"
    stopped = _until(lambda: _event_at(stack_e2e, long_id, "gpu", event), 30,
                     f"{long_id}: the gpu worker never stopped")
    next_row = stack_e2e.wait_final(next_id, timeout=120)
    next_gpu = _event_at(stack_e2e, next_id, "gpu", "started")

    interval = stack_e2e.settings.heartbeat_interval_s
    stop_s, free_s = stopped - taken, next_gpu - stopped
    print(f"\n{how}: stopped {stop_s:.2f} s after (heartbeat {interval} s), next job's gpu "
          f"stage started {free_s:.2f} s after that; progress then {progress:.1f} %")
    # Within one heartbeat plus one frame batch (tens of ms here) and the event's write.
    assert stop_s < interval + 1.0, stop_s
    assert free_s < 5.0, free_s
    assert next_row["status"] == "completed"
    render_dir = stack_e2e.settings.work_dir / long_id / "render"
    assert not list(render_dir.glob("*.partial")), list(render_dir.glob("*"))
    assert stack_e2e.events(long_id).count(("gpu", "started")) == 1
    if how == "cancelled":
        row = stack_e2e.row(long_id)
        assert (row["status"], row["lease_owner"]) == ("cancelled", None)
        assert not (stack_e2e.settings.work_dir / long_id).exists()
    else:  # leave nothing running for the other tests
        journal.finish(stack_e2e.db_engine, long_id, Status.CANCELLED, error_code="task.cancelled")


@pytest.fixture
def budget_gpu(stack_e2e: Stack) -> Iterator[Callable[[], None]]:
    """Stops the gpu pool; the test starts it again with a small budget; restored after."""
    stack_e2e.stop_worker("gpu")
    normal = dict(stack_e2e.env)

    def start() -> None:
        stack_e2e.env = dict(normal, SONIC_GPU_BUDGET_BASE_S=str(BUDGET_BASE_S),
                             SONIC_GPU_BUDGET_PER_AUDIO_S=str(BUDGET_PER_AUDIO_S))
        stack_e2e.start_worker("gpu")

    try:
        yield start
    finally:
        stack_e2e.stop_worker("gpu")
        stack_e2e.env = normal
        stack_e2e.start_worker("gpu")


def _corrupt(stack: Stack, task_id: str, how: str) -> str:
    """Break the prepared record the gpu stage reads; the exception type it will raise."""
    path = stack.settings.work_dir / task_id / "prepared.json"
    prepared = json.loads(path.read_text())
    if how == "missing_key":
        del prepared["image"]
        expected = "KeyError"
    elif how == "bad_number":
        prepared["audio"]["duration_s"] = "eighty"
        expected = "ValueError"
    else:
        prepared["image"]["face_in_crop"] = None
        expected = "TypeError"
    path.write_text(json.dumps(prepared))
    return expected


def test_unexpected_exceptions_and_a_spent_budget_end_at_once_with_their_codes(
        stack_e2e: Stack, budget_gpu: Callable[[], None], long_speech: Path,
        unique: str) -> None:
    # Given jobs prepared while no gpu worker runs, whose prepared record is then broken,
    broken = {}
    for how in ("missing_key", "bad_number", "none_box"):
        task_id = stack_e2e.submit(f"crash-{how}-{unique}")
        _until(lambda t=task_id: stack_e2e.row(t)["stage"] == "gpu", 120, f"{task_id} stuck")
        broken[task_id] = _corrupt(stack_e2e, task_id, how)
    long_id = stack_e2e.submit(f"budget-{unique}", audio=str(long_speech), config=LONG)
    after_id = stack_e2e.submit(f"after-budget-{unique}")
    _until(lambda: stack_e2e.row(long_id)["stage"] == "gpu", 120, f"{long_id} stuck")
    # when the gpu worker starts with a budget of 2 s + 0.05 s per audio second,
    budget_gpu()

    # each broken job fails at once with internal.error: no retry, no lease left to expire,
    for task_id, kind in broken.items():
        row = stack_e2e.wait_final(task_id, timeout=120)
        assert (row["status"], row["error_code"]) == ("failed", "internal.error"), row
        assert row["error_message"].startswith(kind) and row["lease_owner"] is None
        events = stack_e2e.events(task_id)
        assert events.count(("gpu", "started")) == 1 and ("gpu", "failed") in events
        assert not any(e in ("retrying", "requeued") for _, e in events)
        with stack_e2e.db_engine.connect() as conn:
            detail = conn.execute(text("SELECT detail FROM task_events WHERE task_id = :t "
                                       "AND event = 'failed'"), {"t": task_id}).scalar()
        assert "Traceback" in detail["traceback"] and "inference.py" in detail["traceback"]
        hooks = [r for r in stack_e2e.receiver.requests if r.payload["task_id"] == task_id]
        assert len(hooks) == 1 and hooks[0].payload["error"]["code"] == "internal.error"
        assert not (stack_e2e.settings.work_dir / task_id).exists()

    # the long render stops at its budget with stage.timeout, once,
    budget = BUDGET_BASE_S + BUDGET_PER_AUDIO_S * _audio_s(long_speech)
    row = stack_e2e.wait_final(long_id, timeout=120)
    assert (row["status"], row["error_code"]) == ("failed", "stage.timeout"), row
    events = stack_e2e.events(long_id)
    assert events.count(("gpu", "started")) == 1
    with stack_e2e.db_engine.connect() as conn:
        took = conn.execute(text("SELECT duration_s FROM task_events WHERE task_id = :t "
                                 "AND stage = 'gpu' AND event = 'failed'"),
                            {"t": long_id}).scalar()
    print(f"\nbudget {budget:.2f} s: the render stopped after {took:.2f} s")
    assert budget <= took < budget + stack_e2e.settings.heartbeat_interval_s + 1.0
    hooks = [r for r in stack_e2e.receiver.requests if r.payload["task_id"] == long_id]
    assert len(hooks) == 1 and hooks[0].payload["error"]["code"] == "stage.timeout"

    # and the worker goes on with the next job.
    assert stack_e2e.wait_final(after_id, timeout=120)["status"] == "completed"
