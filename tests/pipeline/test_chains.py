"""Chain building: names, order, task ids, priority; the fast path renders Celery's bytes."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
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
class TestFastPath:
    @pytest.fixture
    def client(self, stack: Settings) -> Iterator[redis.Redis]:
        client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=TEST_REDIS_DB)
        client.flushdb()
        yield client
        client.flushdb()

    @staticmethod
    def parse(raw: bytes) -> dict[str, Any]:
        message = json.loads(raw)
        message["body"] = json.loads(base64.b64decode(message["body"]))
        message["properties"].pop("delivery_tag")
        message["headers"].pop("origin")
        return message

    @pytest.mark.parametrize("priority", [0, 5, 9])
    def test_rendered_message_equals_apply_async(self, app: Any, client: redis.Redis,
                                                 priority: int) -> None:
        chains.dispatch_one(app, "same-id", priority)
        key = chains.queue_keys(["preprocess"])[priority]
        (plain,) = client.lrange(key, 0, -1)
        publisher = chains.ChainPublisher(app, client)
        rendered_key, rendered = publisher.message("same-id", priority)
        publisher.close()
        assert rendered_key == key
        assert self.parse(rendered) == self.parse(plain)

    def test_first_task_carries_the_rest_reversed(self, app: Any, client: redis.Redis) -> None:
        publisher = chains.ChainPublisher(app, client)
        _, raw = publisher.message("job-9", 2)
        publisher.close()
        message = self.parse(raw)
        assert message["headers"]["task"] == "sonic.preprocess"
        assert message["headers"]["id"] == "job-9:preprocess"
        assert message["properties"]["priority"] == 2
        args, kwargs, embed = message["body"]
        assert args == ["job-9"] and kwargs == {}
        assert [s["options"]["task_id"] for s in embed["chain"]] == [
            "job-9:callback", "job-9:upload", "job-9:encode", "job-9:gpu"]

    def test_unusual_ids_take_the_exact_path(self, app: Any, client: redis.Redis) -> None:
        publisher = chains.ChainPublisher(app, client)
        odd = "quote'\"back\\slash é"
        _, raw = publisher.message(odd, 5)
        publisher.close()
        message = self.parse(raw)
        assert message["headers"]["id"] == f"{odd}:preprocess"
        assert message["body"][0] == [odd]

    def test_publish_pushes_one_message_per_job_and_marks(self, app: Any,
                                                          client: redis.Redis) -> None:
        publisher = chains.ChainPublisher(app, client)
        jobs = [(f"j{i}", i % 10) for i in range(50)]
        publisher.publish(jobs, marker="m")
        publisher.close()
        found = []
        for key in chains.queue_keys(["preprocess"]):
            found += [self.parse(raw)["body"][0][0] for raw in client.lrange(key, 0, -1)]
        assert sorted(found) == sorted(t for t, _ in jobs)
        assert client.hlen("m") == 50
        # FIFO within a priority: the consumer pops from the right.
        assert [self.parse(r)["body"][0][0] for r in client.lrange("preprocess:3", 0, -1)][::-1] \
            == [t for t, p in jobs if p == 3]
