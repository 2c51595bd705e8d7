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
    long_speech = speak(stack_e2e.inputs / f"long-{unique}.wav",
                        "This sentence is long on purpose, so that the stage takes a while "
                        "and the worker can be killed while it runs. " * 2)
    if stage == "callback":
        stack_e2e.receiver.script[:] = [Reply(200, delay=4)]
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
