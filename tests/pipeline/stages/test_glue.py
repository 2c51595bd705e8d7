"""The glue never loses a step: a message it cannot publish (the broker is down) is handed
to the reconciler through PostgreSQL, whose next sweep publishes it again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task
from celery.exceptions import Ignore
from sqlalchemy import Engine, text

from pipeline.celery_config import celery_config
from pipeline.chains import signatures
from pipeline.errors import AudioError, StorageError
from pipeline.reconcile import sweep
from pipeline.settings import Settings
from pipeline.stages import glue
from pipeline.stages.runner import StageContext
from tests.support.server import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def fast(stack: Settings, tmp_path) -> Settings:
    return stack.model_copy(update={"heartbeat_interval_s": 1, "lease_ttl_s": 30,
                                    "work_dir": tmp_path, "max_attempts": 3})


@pytest.fixture
def topic(unique: str) -> str:
    return f"glue-{unique}"


@pytest.fixture
def task_id(db_engine: Engine, unique: str, topic: str) -> str:
    tid = f"glue-{unique}"
    with db_engine.begin() as conn:
        conn.execute(text("INSERT INTO tasks (task_id, kafka_topic, status, stage, payload, "
                          "priority) VALUES (:t, :topic, 'queued', 'preprocess', '{}', 4)"),
                     {"t": tid, "topic": topic})
    return tid


@pytest.fixture
def dead_broker(fast: Settings, db_engine: Engine,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A Celery app whose Redis is not there; publishes give up after one quick retry."""
    settings = fast.model_copy(update={"redis_port": free_port()})
    app = Celery("glue-test", set_as_current=False)
    app.config_from_object(celery_config(settings))
    monkeypatch.setattr(glue, "PUBLISH_RETRY", {"max_retries": 1, "interval_start": 0,
                                                "interval_step": 0.1, "interval_max": 0.1})
    monkeypatch.setattr(glue, "process_db_engine", lambda _: db_engine)
    yield app


def _task(app: Celery, task_id: str, stage: str) -> Task:
    """A bound task in a worker-like request: its chain is the rest of the job's chain."""
    def run(self: Task, task_id: str) -> str:
        return task_id

    task = app.task(name=f"test.{stage}", bind=True, max_retries=None)(run)
    rest = signatures(app, task_id, 4)[1:]
    stages = [sig.options["task_id"].rsplit(":", 1)[1] for sig in rest]
    chain = list(reversed(rest[stages.index(stage) + 1:] if stage in stages else rest))
    task.push_request(id=f"{task_id}:{stage}", args=[task_id], kwargs={}, retries=0,
                      chain=chain, called_directly=False, is_eager=False,
                      delivery_info={"routing_key": stage, "exchange": ""})
    return task


def _sweep(db_engine: Engine, topic: str) -> list[tuple[str, str]]:
    sent: list[tuple[str, str]] = []
    sweep(db_engine, topic=topic, max_attempts=3,
          dispatch=lambda t, p, s: sent.append((t, s)))
    return sent


def _row(db_engine: Engine, task_id: str) -> dict[str, Any]:
    with db_engine.connect() as conn:
        return dict(conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                                 {"t": task_id}).mappings().one())


def _ok(ctx: StageContext) -> dict[str, Any]:
    return {}


def test_a_next_step_that_cannot_be_published_is_owed_to_the_reconciler(
        fast: Settings, db_engine: Engine, dead_broker: Celery, task_id: str,
        topic: str) -> None:
    task = _task(dead_broker, task_id, "preprocess")
    assert glue.execute(task, fast, "preprocess", task_id, _ok) == task_id
    assert task.request.chain is None  # Celery has nothing left to publish either
    row = _row(db_engine, task_id)
    assert (row["stage"], row["lease_stage"]) == ("gpu", "gpu")
    assert row["lease_owner"].startswith("handoff:")
    assert _sweep(db_engine, topic) == [(task_id, "gpu")]


@pytest.mark.parametrize("error", [AudioError("undecodable", code="audio.undecodable"),
                                   ZeroDivisionError("division by zero")])
def test_a_callback_that_cannot_be_published_is_owed_to_the_reconciler(
        fast: Settings, db_engine: Engine, dead_broker: Celery, task_id: str, topic: str,
        error: Exception) -> None:

    def stage(ctx: StageContext) -> dict[str, Any]:
        raise error

    with pytest.raises(Ignore):
        glue.execute(_task(dead_broker, task_id, "preprocess"), fast, "preprocess", task_id,
                     stage)
    row = _row(db_engine, task_id)
    assert (row["status"], row["lease_stage"]) == ("failed", "callback")
    assert _sweep(db_engine, topic) == [(task_id, "callback")]


def test_a_retry_that_cannot_be_published_is_owed_to_the_reconciler(
        fast: Settings, db_engine: Engine, dead_broker: Celery, task_id: str,
        topic: str) -> None:

    def stage(ctx: StageContext) -> dict[str, Any]:
        raise StorageError("object store answered 503")

    with pytest.raises(Ignore):
        glue.execute(_task(dead_broker, task_id, "preprocess"), fast, "preprocess", task_id,
                     stage)
    row = _row(db_engine, task_id)
    assert (row["status"], row["stage"], row["lease_stage"]) == (
        "running", "preprocess", "preprocess")
    assert _sweep(db_engine, topic) == [(task_id, "preprocess")]
