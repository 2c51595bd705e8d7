"""A Celery task through the real Redis, executed by a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from celery import Celery

from pipeline.celery_config import celery_config
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

#: A Redis database of its own, so the test never sees the suite's other queues.
TEST_REDIS_DB = 7


@pytest.fixture
def worker_settings(stack: Settings) -> Settings:
    return stack.model_copy(update={"redis_db": TEST_REDIS_DB})


@pytest.fixture
def worker(worker_settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ, SONIC_REDIS_DB=str(TEST_REDIS_DB))
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "pipeline", "worker", "-Q", "default",
         "-P", "solo", "-n", "test-ping@%h", "--loglevel", "WARNING"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_task_runs_on_a_real_worker(worker_settings: Settings,
                                    worker: subprocess.Popen[bytes]) -> None:
    client = Celery("test-client")
    client.config_from_object(celery_config(worker_settings))
    token = f"ping-{time.time_ns()}"
    result = client.send_task("sonic.ping", args=[token], queue="default")
    reply = result.get(timeout=60)
    assert reply["token"] == token
    assert reply["pid"] == worker.pid  # solo pool: the task ran in the worker we started
    assert result.state == "SUCCESS"


def test_stage_tasks_route_to_their_queues(worker_settings: Settings) -> None:
    client = Celery("test-client")
    client.config_from_object(celery_config(worker_settings))
    router = client.amqp.router
    for name, queue in [("sonic.preprocess", "preprocess"), ("sonic.inference", "gpu"),
                        ("sonic.encode", "encode"), ("sonic.upload", "upload"),
                        ("sonic.callback", "callback")]:
        assert router.route({}, name)["queue"].name == queue
