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

    # Nothing of the job is left: no inputs, audio, frames or video (the callback stage
    # may leave an empty dir behind; it reads nothing from it).
    workdir = stack_e2e.settings.work_dir / task_id
    left = sorted(p.name for p in workdir.iterdir()) if workdir.exists() else []
    assert left == [], left

    # The sweep removes whatever remains of a final job, and nothing of a running one.
    running = stack_e2e.settings.work_dir / f"hk-{unique}-running"
    with stack_e2e.engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, status, stage, payload) "
                          "VALUES (:t, 'running', 'gpu', '{}')"), {"t": running.name})
    (running / "render").mkdir(parents=True)
    removed = sweep_workdirs(stack_e2e.settings, stack_e2e.engine, older_than_s=0)
    assert running not in removed and running.is_dir()
    assert not workdir.exists()
