"""Work dirs and render knobs: a task id never leaves the work dir; stages see only
validated, typed knobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import PermanentError
from pipeline.stages.artifacts import job_config, task_workdir
from tests.pipeline.test_jobs import BAD_IDS, GOOD_IDS


@pytest.mark.parametrize("task_id", BAD_IDS + ["..\\..", "a/../..", "/", "x/"])
def test_an_invalid_id_never_becomes_a_path(task_id: str, tmp_path: Path) -> None:
    with pytest.raises(PermanentError) as caught:
        task_workdir(tmp_path, task_id)
    assert caught.value.code == "task.invalid_id"


@pytest.mark.parametrize("task_id", GOOD_IDS)
def test_a_valid_id_is_a_direct_child_of_the_work_dir(task_id: str, tmp_path: Path) -> None:
    path = task_workdir(tmp_path, task_id)
    assert path.parent == tmp_path.resolve() and path.name == task_id


def test_a_symlink_planted_in_the_work_dir_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(outside, work / "job-1")
    with pytest.raises(PermanentError) as caught:
        task_workdir(work, "job-1")
    assert caught.value.code == "task.invalid_id" and "outside" in caught.value.message


def test_a_work_dir_behind_a_symlink_is_fine(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    assert task_workdir(tmp_path / "link", "job-1") == real.resolve() / "job-1"


def task(config: Any = None, payload_config: Any = None) -> dict[str, Any]:
    return {"config": config, "payload": {"config": payload_config}}


@pytest.mark.parametrize("row", [
    task({"expand_ratio": None}),
    task({"min_resolution": None, "inference_steps": None, "dynamic_scale": None,
          "motion_scale": None, "seed": None, "other": None}),
    task(None, {"expand_ratio": None}),
    task(None, None),
    {"config": None, "payload": None},
    {},
])
def test_null_knobs_are_dropped(row: dict[str, Any]) -> None:
    assert job_config(row) == {}


def test_knobs_are_typed_and_the_stored_config_wins() -> None:
    knobs = job_config(task({"dynamic_scale": 2, "seed": 7, "engine_knob": "x"},
                            {"dynamic_scale": 1.5, "min_resolution": 256}))
    assert knobs == {"dynamic_scale": 2.0, "seed": 7, "min_resolution": 256, "engine_knob": "x"}
    assert isinstance(knobs["dynamic_scale"], float)


@pytest.mark.parametrize(("config", "code"), [
    ({"min_resolution": 100000}, "message.out_of_range"),
    ({"inference_steps": 10**9}, "message.out_of_range"),
    ({"expand_ratio": -1}, "message.out_of_range"),
    ({"inference_steps": True}, "message.wrong_type"),
    ({"min_resolution": 512.0}, "message.wrong_type"),
    ({"dynamic_scale": "1.0"}, "message.wrong_type"),
    ([1, 2], "message.wrong_type"),
])
def test_a_stored_config_that_does_not_validate_fails_the_stage(config: Any, code: str) -> None:
    with pytest.raises(PermanentError) as caught:
        job_config(task(config))
    assert caught.value.code == code
