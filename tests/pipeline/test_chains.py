"""Chain building: names, order, task ids, priority; the fast path renders Celery's bytes."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from pipeline import chains
from pipeline.celery_config import TASK_NAMES
from pipeline.settings import STAGES, Settings, load

#: A Redis database of its own (the template capture declares nothing, but publishes).
TEST_REDIS_DB = 6


@pytest.fixture(scope="module")
def app() -> Any:
    return chains.make_app(load(redis_db=TEST_REDIS_DB))


def test_signatures_follow_the_stages_by_name(app: Any) -> None:
    sigs = chains.signatures(app, "job-1", 3)
    assert [s.task for s in sigs] == [TASK_NAMES[stage] for stage in STAGES]
    assert [s.options["task_id"] for s in sigs] == [f"job-1:{stage}" for stage in STAGES]
    assert all(s.args == ("job-1",) and s.immutable for s in sigs)
    assert {s.options["priority"] for s in sigs} == {3}


def test_a_chain_can_start_at_a_later_stage(app: Any) -> None:
    sigs = chains.signatures(app, "job-2", 5, start="encode")
    assert [s.task for s in sigs] == ["sonic.encode", "sonic.upload", "sonic.callback"]


def test_queue_keys_cover_every_priority() -> None:
    keys = chains.queue_keys(["preprocess"])
    assert keys[0] == "preprocess" and keys[9] == "preprocess:9" and len(keys) == 10


@pytest.mark.integration
def test_a_chain_is_one_message_whose_first_task_carries_the_rest(app: Any,
                                                                  stack: Settings) -> None:
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=TEST_REDIS_DB)
    client.flushdb()
    try:
        for priority in (0, 5, 9):
            chains.dispatch_one(app, f"job-{priority}", priority)
        for priority in (0, 5, 9):
            (raw,) = client.lrange(chains.queue_keys(["preprocess"])[priority], 0, -1)
            message = json.loads(raw)
            args, kwargs, embed = json.loads(base64.b64decode(message["body"]))
            assert message["headers"]["id"] == f"job-{priority}:preprocess"
            assert message["properties"]["priority"] == priority
            assert args == [f"job-{priority}"] and kwargs == {}
            assert [s["options"]["task_id"] for s in embed["chain"]] == [
                f"job-{priority}:{stage}" for stage in ("callback", "upload", "encode", "gpu")]
    finally:
        client.flushdb()
        client.close()
