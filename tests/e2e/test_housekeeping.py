"""Work dirs on the real chain: a finished job leaves nothing on the shared disk."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from pipeline.housekeeping import sweep_workdirs
from pipeline.storage import get_store
from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_upload_removes_the_work_dir_and_the_sweep_takes_what_is_left(
        stack_e2e: Stack, unique: str) -> None:
    task_id = stack_e2e.submit(f"hk-{unique}")
    row = stack_e2e.wait_final(task_id)
    assert (row["status"], row["callback_status"]) == ("completed", "delivered"), row
    store = get_store(stack_e2e.settings)
    assert store.exists(f"videos/{task_id}.mp4") and store.exists(f"videos/{task_id}.jpg")

    # Nothing of the job is left: no inputs, audio, frames or video, no dir.
    workdir = stack_e2e.settings.work_dir / task_id
    assert not workdir.exists(), sorted(p.name for p in workdir.iterdir())

    # The sweep removes whatever remains of a final job, and nothing of a running one.
    running = stack_e2e.settings.work_dir / f"hk-{unique}-running"
    with stack_e2e.db_engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, status, stage, payload) "
                          "VALUES (:t, 'running', 'gpu', '{}')"), {"t": running.name})
    (running / "render").mkdir(parents=True)
    workdir.mkdir()  # what a crash between upload and its clean-up would leave
    removed = sweep_workdirs(stack_e2e.settings, stack_e2e.db_engine, older_than_s=0)
    assert workdir in removed and not workdir.exists()
    assert running not in removed and running.is_dir()


def test_a_job_that_fails_for_good_leaves_no_work_dir(stack_e2e: Stack, unique: str) -> None:
    bogus = stack_e2e.inputs / f"not-an-image-{unique}.jpg"
    bogus.write_bytes(b"this is not a picture " * 64)
    task_id = stack_e2e.submit(f"hk-fail-{unique}", image=str(bogus))
    row = stack_e2e.wait_final(task_id)
    assert (row["status"], row["callback_status"]) == ("failed", "delivered"), row
    assert row["error_code"].startswith("image."), row
    assert not (stack_e2e.settings.work_dir / task_id).exists()
