"""Any exception a stage raises ends it at once with a code, against the real PostgreSQL:
the lease is released, the outcome follows the error's class, nothing waits for expiry."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, text

from pipeline import faults
from pipeline.errors import CODES
from pipeline.settings import Settings
from pipeline.stages.runner import StageContext, StageOutcome, run_stage
from tests.pipeline.stages.conftest import task_events, task_row

pytestmark = pytest.mark.integration


def _float_none() -> None:
    float(None)  # type: ignore[arg-type] - the field case: "expand_ratio": null


def _int_garbage() -> None:
    int("twenty-five")


def _missing_key() -> None:
    _ = {}["face_in_crop"]


def _memory() -> None:
    raise MemoryError()


def _cuda_oom() -> None:
    import torch

    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def _cv2_decode() -> None:
    import cv2

    cv2.imdecode(np.zeros(0, np.uint8), cv2.IMREAD_COLOR)


def _cv2_resize() -> None:
    import cv2

    cv2.resize(np.zeros((0, 0, 3), np.uint8), (64, 64))


def _soft_time_limit() -> None:
    from celery.exceptions import SoftTimeLimitExceeded

    raise SoftTimeLimitExceeded()


def _permission() -> None:
    raise PermissionError(errno.EACCES, "Permission denied", "/state/work/x")


#: (what the stage does, the code it ends with) - each fails at once, not retried.
PERMANENT: list[tuple[Callable[[], None], str, str]] = [
    (_float_none, "internal.error", "TypeError"),
    (_int_garbage, "internal.error", "ValueError"),
    (_missing_key, "internal.error", "KeyError"),
    (_permission, "internal.error", "PermissionError"),
    (_cv2_resize, "internal.error", "error"),
    (_memory, "resource.out_of_memory", "MemoryError"),
    (_cuda_oom, "resource.out_of_memory", "OutOfMemoryError"),
    (_cv2_decode, "image.undecodable", "error"),
    (_soft_time_limit, "stage.timeout", "SoftTimeLimitExceeded"),
]


@pytest.mark.parametrize(("raise_it", "code", "kind"), PERMANENT,
                         ids=[f.__name__.strip("_") for f, _, _ in PERMANENT])
def test_an_unexpected_exception_fails_the_job_at_once_with_a_code(
        fast: Settings, db_engine: Engine, task_id: str, raise_it: Callable[[], None],
        code: str, kind: str) -> None:
    calls = []

    def stage(ctx: StageContext) -> dict[str, Any]:
        calls.append(1)
        raise_it()
        return {}

    result = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert result.outcome is StageOutcome.FAILED and result.error.code == code
    assert code in CODES
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"]) == ("failed", code)
    assert row["lease_owner"] is None and row["finished_at"] is not None
    assert kind in row["error_message"]
    event, detail = task_events(db_engine, task_id, "event", "detail")[-1]
    assert event == "failed" and detail["code"] == code and detail["exception"] == kind
    assert "Traceback (most recent call last)" in detail["traceback"]
    assert raise_it.__name__ in detail["traceback"]
    # A redelivered copy does not run it again: one run, no retry storm, no task.lost.
    assert run_stage(fast, db_engine, task_id, "preprocess", stage).outcome is StageOutcome.SKIP
    assert len(calls) == 1


def _disk_full() -> None:
    raise OSError(errno.ENOSPC, "No space left on device", "/state/work/x/frames.rgb")


def _quota() -> None:
    raise OSError(errno.EDQUOT, "Disk quota exceeded")


def _reset() -> None:
    raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")


RECOVERABLE = [(_disk_full, "resource.disk_full"), (_quota, "resource.disk_full"),
               (_reset, "transport.error")]


@pytest.mark.parametrize(("raise_it", "code"), RECOVERABLE,
                         ids=[f.__name__.strip("_") for f, _ in RECOVERABLE])
def test_a_recoverable_exception_is_retried_then_fails_after_the_cap(
        fast: Settings, db_engine: Engine, task_id: str, raise_it: Callable[[], None],
        code: str) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        raise_it()
        return {}

    first = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert first.outcome is StageOutcome.RETRY and first.error.code == code
    assert first.owner is None  # released: the retry takes a fresh lease
    assert task_row(db_engine, task_id)["lease_owner"] is None
    second = run_stage(fast, db_engine, task_id, "preprocess", stage)
    assert second.outcome is StageOutcome.FAILED and second.error.code == code  # max_attempts=2
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"], row["lease_owner"]) == ("failed", code, None)
    assert [e for e, _ in task_events(db_engine, task_id, "event", "detail")] == [
        "started", "retrying", "started", "failed"]


def test_classify_keeps_our_errors_and_names_the_others() -> None:
    from pipeline.errors import AudioError

    ours = AudioError("silent", code="audio.silent")
    assert faults.classify(ours) is ours
    err = faults.classify(ZeroDivisionError("division by zero"))
    assert (err.code, err.message) == ("internal.error", "ZeroDivisionError: division by zero")
    assert faults.classify(RuntimeError("CUDA error: out of memory")).code == \
        "resource.out_of_memory"
    assert faults.classify(TimeoutError()).code == "transport.error"
    assert faults.classify(RuntimeError("shape mismatch")).code == "internal.error"


@pytest.mark.parametrize("raise_it", [_float_none, _memory, _disk_full])
def test_a_job_failed_for_good_leaves_no_work_dir(fast: Settings, db_engine: Engine,
                                                  task_id: str,
                                                  raise_it: Callable[[], None]) -> None:
    def stage(ctx: StageContext) -> dict[str, Any]:
        (ctx.workdir / "inputs").mkdir()
        (ctx.workdir / "inputs" / "audio.mp3").write_bytes(b"\0" * 1024)
        raise_it()
        return {}

    outcomes = [run_stage(fast, db_engine, task_id, "preprocess", stage).outcome
                for _ in range(2)]
    assert StageOutcome.FAILED in outcomes
    assert task_row(db_engine, task_id)["status"] == "failed"
    assert not (fast.work_dir / task_id).exists()


def test_a_crash_in_the_callback_stage_never_fails_a_finished_job(
        fast: Settings, db_engine: Engine, task_id: str) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET status = 'completed', stage = 'callback', "
                          "finished_at = now() WHERE task_id = :t"), {"t": task_id})

    def stage(ctx: StageContext) -> dict[str, Any]:
        _float_none()
        return {}

    result = run_stage(fast, db_engine, task_id, "callback", stage, max_attempts=10**6)
    assert result.outcome is StageOutcome.FAILED and result.error.code == "internal.error"
    row = task_row(db_engine, task_id)
    assert (row["status"], row["error_code"], row["callback_status"], row["lease_owner"]) == (
        "completed", None, "failed", None)
    # Settled: a redelivered callback stage sends nothing.
    from pipeline.stages.callback import SETTLED

    assert row["callback_status"] in SETTLED
