"""Recoverable failures recover; a worker killed mid-task in any pool costs nothing."""

from __future__ import annotations

import time

import boto3
import pytest

from tests.e2e.conftest import Stack
from tests.pipeline.media.helpers import speak
from tests.support.receiver import Reply

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _objects(stack: Stack, task_id: str) -> list[str]:
    s = stack.settings
    client = boto3.client("s3", endpoint_url=s.s3_endpoint, region_name=s.s3_region,
                          aws_access_key_id=s.s3_access_key.get_secret_value(),
                          aws_secret_access_key=s.s3_secret_key.get_secret_value())
    listing = client.list_objects_v2(Bucket=s.s3_bucket, Prefix=f"videos/{task_id}")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_receiver_503_then_200_is_delivered_on_retry(stack_e2e: Stack, unique: str) -> None:
    stack_e2e.receiver.script[:] = [Reply(503), Reply(503, headers={"Retry-After": "1"})]
    task_id = stack_e2e.submit(f"hook503-{unique}")
    row = stack_e2e.wait_final(task_id, timeout=180)
    assert (row["status"], row["callback_status"], row["callback_attempts"]) == (
        "completed", "delivered", 3)
    hooks = [r for r in stack_e2e.receiver.requests if r.payload["task_id"] == task_id]
    # Every attempt carries the same webhook-id: the receiver can deduplicate.
    assert len(hooks) == 3 and len({h.headers["webhook-id"] for h in hooks}) == 1
    assert all(h.verified for h in hooks)


def test_receiver_gone_for_good_leaves_the_task_completed(stack_e2e: Stack,
                                                          unique: str) -> None:
    stack_e2e.receiver.script[:] = [Reply(410)]
    task_id = stack_e2e.submit(f"hook410-{unique}")
    row = stack_e2e.wait_final(task_id)
    assert (row["status"], row["callback_status"]) == ("completed", "failed")
    assert row["error_code"] is None and row["result_url"]


def test_storage_down_for_a_while_recovers(stack_e2e: Stack, unique: str) -> None:
    stack_e2e.minio.stop()
    try:
        task_id = stack_e2e.submit(f"s3down-{unique}")
        deadline = time.monotonic() + 90
        while ("upload", "retrying") not in stack_e2e.events(task_id):
            assert time.monotonic() < deadline, stack_e2e.events(task_id)
            time.sleep(0.2)
    finally:
        stack_e2e.minio.wait_ready(stack_e2e.minio.start())
    row = stack_e2e.wait_final(task_id, timeout=120)
    assert (row["status"], row["callback_status"]) == ("completed", "delivered")
    assert _objects(stack_e2e, task_id) == [f"videos/{task_id}.jpg", f"videos/{task_id}.mp4"]


@pytest.mark.parametrize("pool,stage", [("gpu", "gpu"), ("cpu", "encode"),
                                        ("io", "callback")])
def test_kill_9_of_a_pool_mid_task_completes_once(stack_e2e: Stack, reconciler: list,
                                                  unique: str, pool: str,
                                                  stage: str) -> None:
    if stage == "callback":  # the receiver makes the stage last; the job is the default
        stack_e2e.receiver.script[:] = [Reply(200, delay=4)]
        task_id = stack_e2e.submit(f"kill-{pool}-{unique}")
    else:  # a long render (and so a long encode) at 512 px
        long_speech = speak(stack_e2e.inputs / f"long-{unique}.wav",
                            "This sentence is long on purpose, so that the stage takes a "
                            "while and the worker can be killed while it runs. " * 2)
        task_id = stack_e2e.submit(f"kill-{pool}-{unique}", audio=str(long_speech),
                                   config={"min_resolution": 512, "seed": 3})
    stack_e2e.wait_stage(task_id, stage, timeout=120)
    stack_e2e.kill_pool(pool)
    stack_e2e.start_worker(pool)
    row = stack_e2e.wait_final(task_id, timeout=240)
    assert (row["status"], row["callback_status"]) == ("completed", "delivered"), row
    events = stack_e2e.events(task_id)
    assert (stage, "requeued") in events
    # Exactly one success per stage, one video object, one poster.
    succeeded = [s for s, e in events if e == "succeeded"]
    assert succeeded == ["preprocess", "gpu", "encode", "upload", "callback"]
    assert _objects(stack_e2e, task_id) == [f"videos/{task_id}.jpg", f"videos/{task_id}.mp4"]


#: Jobs in flight when PostgreSQL restarts: queued, running and between stages.
PG_JOBS = 8


def _final_or_none(stack: Stack, task_id: str) -> dict | None:
    try:
        row = stack.row(task_id)
    except Exception:  # noqa: BLE001 - PostgreSQL is coming back
        return None
    settled = row["callback_status"] in ("delivered", "failed", "none")
    return row if row["status"] in ("completed", "failed", "cancelled") and settled else None


def test_a_postgres_restart_with_jobs_in_flight_loses_none_and_runs_none_twice(
        stack_e2e: Stack, stack, unique: str) -> None:
    """The field case: the gpu worker takes queued messages while PostgreSQL is down."""
    from ops.services.postgres import Postgres

    pg = Postgres(stack)
    assert pg.pid() is not None, "the test restarts the local PostgreSQL: it must be running"
    speech = speak(stack_e2e.inputs / f"pg-{unique}.wav",
                   "A sentence of a few seconds, so that stages run while the database "
                   "restarts.")
    log = stack_e2e.settings.state_dir / "worker-gpu.log"
    stack_e2e.stop_worker("gpu")
    mark = log.stat().st_size if log.exists() else 0
    ids = [stack_e2e.submit(f"pg-{i}-{unique}", audio=str(speech),
                            config={"min_resolution": 256, "seed": i}) for i in range(PG_JOBS)]
    deadline = time.monotonic() + 120
    while sum(stack_e2e.row(t)["stage"] == "gpu" for t in ids) < 3:
        assert time.monotonic() < deadline, [stack_e2e.row(t)["stage"] for t in ids]
        time.sleep(0.1)
    before = sorted(stack_e2e.row(t)["stage"] for t in ids)
    down_at = time.monotonic()
    try:
        pg.stop()
        # The gpu pool comes up during the outage and takes the queued gpu messages.
        stack_e2e.start_worker("gpu")
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes()[mark:]:
            assert time.monotonic() < deadline, "the gpu worker never got ready"
            time.sleep(0.2)
        time.sleep(4)
    finally:
        pg.wait_ready(pg.start())
    outage = time.monotonic() - down_at
    # No reconciler runs here: every job must finish on its own messages.
    deadline = time.monotonic() + 300
    rows: dict[str, dict] = {}
    while len(rows) < len(ids):
        assert time.monotonic() < deadline, {t: stack_e2e.row(t) for t in ids if t not in rows}
        rows.update({t: r for t in ids if t not in rows
                     for r in [_final_or_none(stack_e2e, t)] if r is not None})
        time.sleep(0.3)
    extra = 0
    for task_id in ids:
        row = rows[task_id]
        assert (row["status"], row["callback_status"]) == ("completed", "delivered"), row
        events = stack_e2e.events(task_id)
        succeeded = [s for s, e in events if e == "succeeded"]
        assert succeeded == ["preprocess", "gpu", "encode", "upload", "callback"], events
        assert _objects(stack_e2e, task_id) == [f"videos/{task_id}.jpg",
                                                f"videos/{task_id}.mp4"]
        hooks = [r for r in stack_e2e.receiver.requests if r.payload["task_id"] == task_id]
        assert hooks and len({h.headers["webhook-id"] for h in hooks}) == 1
        assert all(h.payload["status"] == "completed" for h in hooks)
        extra += sum(1 for _, e in events if e == "started") - 5
    # The outage was met where it used to drop messages: the lease acquire of the gpu pool.
    retries = [line for line in log.read_bytes()[mark:].decode(errors="replace").splitlines()
               if "retry: Retry in" in line and "DatabaseUnavailable" in line]
    assert retries, "the gpu pool never met the outage"
    # Every pool serves again: a job submitted after the restart runs every stage.
    after = stack_e2e.submit(f"pg-after-{unique}")
    assert stack_e2e.wait_final(after, timeout=180)["status"] == "completed"
    assert all(proc.poll() is None for proc in stack_e2e.workers.values())
    print(f"\nPostgreSQL down {outage:.1f} s with {PG_JOBS} jobs in flight (stages then: "
          f"{before}): all completed, each stage succeeded once; the gpu pool retried "
          f"{len(retries)} messages with backoff; {extra} extra stage starts")
