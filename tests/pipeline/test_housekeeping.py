"""Work-dir housekeeping against the real PostgreSQL: what a sweep removes, what it never
touches (running jobs, live leases, links out of the work dir, shared parents)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from pipeline import cli
from pipeline.housekeeping import remove_workdir, sweep_workdirs
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

HOUR = 3600


def _age(path: Path, seconds: float) -> None:
    """Set the mtime of ``path`` and everything under it ``seconds`` in the past."""
    when = time.time() - seconds
    for top, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.utime(os.path.join(top, name), (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)


def _workdir(root: Path, task_id: str, age_s: float = 2 * HOUR) -> Path:
    path = root / task_id
    (path / "render").mkdir(parents=True)
    (path / "render" / "frame-0001.png").write_bytes(b"png")
    (path / "video.mp4").write_bytes(b"mp4")
    (path / "audio.wav").write_bytes(b"wav")
    _age(path, age_s)
    return path


def _task(db_engine: Engine, task_id: str, status: str, *, leased: bool = False) -> str:
    with db_engine.begin() as conn:
        conn.execute(text("""
            INSERT INTO tasks (task_id, status, stage, payload, lease_owner, lease_stage,
                               lease_expires_at)
            VALUES (:t, :s, 'callback', '{}', :owner, :stage,
                    CASE WHEN :leased THEN now() + interval '1 minute' END)
        """), {"t": task_id, "s": status, "leased": leased,
               "owner": "w1" if leased else None, "stage": "callback" if leased else None})
    return task_id


@pytest.fixture
def house(stack: Settings, tmp_path: Path) -> Settings:
    work = tmp_path / "work"
    work.mkdir()
    return stack.model_copy(update={"work_dir": work, "workdir_retention_s": HOUR,
                                    "state_dir": tmp_path / "state",
                                    "storage_dir": tmp_path / "objects",
                                    "input_roots": [tmp_path / "uploads"]})


def test_final_and_unknown_jobs_go_running_ones_and_live_leases_stay(
        house: Settings, db_engine: Engine, unique: str) -> None:
    root = house.work_dir
    gone = {_workdir(root, _task(db_engine, f"hk-{unique}-{s}", s))
            for s in ("completed", "failed", "cancelled")}
    gone.add(_workdir(root, f"hk-{unique}-unknown"))  # its row was deleted by hand
    kept = {_workdir(root, _task(db_engine, f"hk-{unique}-{s}", s))
            for s in ("received", "queued", "running")}
    kept.add(_workdir(root, _task(db_engine, f"hk-{unique}-leased", "completed",
                                  leased=True)))

    assert set(sweep_workdirs(house, db_engine, dry_run=True)) == gone
    assert all(p.exists() for p in gone)  # a dry run removes nothing
    assert set(sweep_workdirs(house, db_engine)) == gone
    assert not any(p.exists() for p in gone) and all(p.is_dir() for p in kept)
    assert sweep_workdirs(house, db_engine) == []


def test_a_dir_touched_within_the_retention_stays(house: Settings, db_engine: Engine,
                                                  unique: str) -> None:
    recent = _workdir(house.work_dir, _task(db_engine, f"hk-{unique}-recent", "failed"))
    deep = recent / "render" / "frame-0002.png"  # only a file deep inside is fresh
    deep.write_bytes(b"new")
    assert sweep_workdirs(house, db_engine) == []
    _age(deep.parent, 10 * 60)  # the file and the dir it was added to
    assert sweep_workdirs(house, db_engine) == []  # 10 minutes < SONIC_WORKDIR_RETENTION_S
    assert sweep_workdirs(house, db_engine, older_than_s=5 * 60) == [recent]


def test_links_are_removed_as_links_never_followed(house: Settings, db_engine: Engine,
                                                   unique: str, tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours")
    # A final job's dir holding a link out of the work dir.
    inner = _workdir(house.work_dir, _task(db_engine, f"hk-{unique}-in", "completed"))
    (inner / "inputs").symlink_to(outside, target_is_directory=True)
    _age(inner, 2 * HOUR)
    # A final job's "dir" that is itself a link out of the work dir.
    link = house.work_dir / _task(db_engine, f"hk-{unique}-link", "completed")
    link.symlink_to(outside, target_is_directory=True)
    _age(link, 2 * HOUR)

    assert set(sweep_workdirs(house, db_engine)) == {inner, link}
    assert not inner.exists() and not link.is_symlink()
    assert (outside / "keep.txt").read_text() == "not ours"


def test_an_unknown_dir_that_is_not_a_work_dir_or_holds_shared_data_stays(
        stack: Settings, db_engine: Engine, unique: str, tmp_path: Path) -> None:
    # The work dir set to a shared parent by mistake: uploads and state live beside jobs.
    shared = tmp_path / "shared"
    settings = stack.model_copy(update={
        "work_dir": shared, "state_dir": shared / f"hk-{unique}-st" / "state",
        "storage_dir": shared / "objects", "input_roots": [shared / "uploads"]})
    (shared / "uploads" / "user1").mkdir(parents=True)
    (shared / "uploads" / "user1" / "avatar.jpg").write_bytes(b"jpg")
    (shared / f"hk-{unique}-st" / "state").mkdir(parents=True)
    _task(db_engine, f"hk-{unique}-st", "completed")  # even a final job's name
    (shared / "notes").mkdir()
    (shared / "notes" / "todo.txt").write_text("mine")
    job = _workdir(shared, f"hk-{unique}-gone")
    for path in shared.iterdir():
        _age(path, 2 * HOUR)

    assert sweep_workdirs(settings, db_engine) == [job]
    assert (shared / "uploads" / "user1" / "avatar.jpg").exists()
    assert (shared / f"hk-{unique}-st" / "state").is_dir()
    assert (shared / "notes" / "todo.txt").exists()


def test_remove_workdir_removes_one_job_and_refuses_what_is_not_a_task_id(
        house: Settings, tmp_path: Path) -> None:
    job = _workdir(house.work_dir, "t-1", age_s=0)
    assert remove_workdir(house, "t-1") is True and not job.exists()
    assert remove_workdir(house, "t-1") is False  # already gone
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("x")
    (house.work_dir / "t-2").symlink_to(victim, target_is_directory=True)
    assert remove_workdir(house, "t-2") is True
    assert not (house.work_dir / "t-2").is_symlink() and (victim / "data").exists()
    for bad in ("..", "../victim", "a/b", "", ".hidden", "/abs"):
        assert remove_workdir(house, bad) is False
    assert (victim / "data").exists() and house.work_dir.is_dir()


def test_the_cli_verb_sweeps_and_reports(house: Settings, db_engine: Engine, unique: str,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    job = _workdir(house.work_dir, _task(db_engine, f"hk-{unique}-cli", "completed"),
                   age_s=120)
    monkeypatch.setenv("SONIC_WORK_DIR", str(house.work_dir))
    monkeypatch.setenv("SONIC_INPUT_ROOTS", str(house.input_roots[0]))
    assert cli.main(["housekeeping"]) == 0  # two minutes < the default retention
    assert json.loads(capsys.readouterr().out) == {"removed": [], "dry_run": False}
    assert cli.main(["housekeeping", "--older-than", "60", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [str(job)] and job.exists()
    assert cli.main(["housekeeping", "--older-than", "60"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [str(job)]
    assert not job.exists()


# --- the upload stage cleans up after itself ------------------------------------------------
def _at_upload(db_engine: Engine, task_id: str) -> str:
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, status, stage, payload) "
                          "VALUES (:t, 'running', 'upload', '{}')"), {"t": task_id})
    return task_id


def test_upload_stores_the_video_then_removes_the_work_dir(
        house: Settings, db_engine: Engine, unique: str) -> None:
    from pipeline.stages import upload
    from pipeline.stages.runner import StageOutcome, run_stage
    from pipeline.storage import get_store

    settings = house.model_copy(update={"storage_backend": "local"})
    task_id = _at_upload(db_engine, f"hk-{unique}-up")
    job = _workdir(settings.work_dir, task_id, age_s=0)
    (job / "poster.jpg").write_bytes(b"jpg")
    assert run_stage(settings, db_engine, task_id, "upload", upload.run).outcome \
        is StageOutcome.CONTINUE
    store = get_store(settings)
    assert store.exists(upload.video_key(task_id)) and store.exists(upload.poster_key(task_id))
    assert not job.exists()
    with db_engine.connect() as conn:
        status, key = conn.execute(text("SELECT status, result_key FROM tasks "
                                        "WHERE task_id = :t"), {"t": task_id}).one()
    assert (status, key) == ("completed", upload.video_key(task_id))


def test_an_upload_rerun_after_the_clean_up_records_what_is_stored(
        house: Settings, db_engine: Engine, unique: str) -> None:
    """Given an earlier copy that stored both objects and removed the work dir but could
    not record it, when the stage runs again, then the job completes (it does not fail on
    the missing files)."""
    from pipeline.stages import upload
    from pipeline.stages.runner import StageOutcome, run_stage
    from pipeline.storage import get_store

    settings = house.model_copy(update={"storage_backend": "local"})
    task_id = _at_upload(db_engine, f"hk-{unique}-again")
    job = _workdir(settings.work_dir, task_id, age_s=0)
    (job / "poster.jpg").write_bytes(b"jpg")
    store = get_store(settings)
    store.put_file(job / "video.mp4", upload.video_key(task_id), "video/mp4")
    store.put_file(job / "poster.jpg", upload.poster_key(task_id), "image/jpeg")
    remove_workdir(settings, task_id)

    assert run_stage(settings, db_engine, task_id, "upload", upload.run).outcome \
        is StageOutcome.CONTINUE
    with db_engine.connect() as conn:
        status, url = conn.execute(text("SELECT status, result_url FROM tasks "
                                        "WHERE task_id = :t"), {"t": task_id}).one()
    assert status == "completed" and url == store.url(upload.video_key(task_id))
