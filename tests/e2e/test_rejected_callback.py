"""A message rejected at the door that named an allowed callback URL gets its callback:
the dispatcher's upkeep publishes it, a real io worker delivers it, signed."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from pipeline.chains import dispatch_one
from pipeline.scheduler import upkeep
from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("code", ["message.out_of_range", "message.wrong_type",
                                  "dependency.cycle"])
def test_a_rejection_is_delivered_to_its_callback_url(stack_e2e: Stack, unique: str,
                                                      code: str) -> None:
    task_id = f"rejected-{code.split('.')[1]}-{unique}"
    with stack_e2e.db_engine.begin() as conn:  # the row admission writes for a reject
        conn.execute(text("""
            INSERT INTO tasks (task_id, kafka_topic, status, error_code, error_message,
                               callback_url, finished_at)
            VALUES (:t, :topic, 'rejected', :code, 'refused at the door', :cb, now())"""),
            {"t": task_id, "topic": stack_e2e.topic, "code": code,
             "cb": stack_e2e.receiver.url("/hook")})
    with stack_e2e.db_engine.begin() as conn:
        for owed, priority in upkeep.owed_callbacks(conn, stack_e2e.topic):
            dispatch_one(stack_e2e.app, owed, priority, "callback")
    deadline = time.monotonic() + 60
    while stack_e2e.row(task_id)["callback_status"] != "delivered":
        assert time.monotonic() < deadline, stack_e2e.row(task_id)
        time.sleep(0.2)
    (hook,) = [r for r in stack_e2e.receiver.requests
               if r.payload and r.payload["task_id"] == task_id]
    assert hook.verified
    assert hook.payload["status"] == "rejected" and hook.payload["video_url"] is None
    assert hook.payload["error"]["code"] == code
    assert stack_e2e.row(task_id)["status"] == "rejected"  # the callback changes nothing else
