"""A real ``celery worker`` executes dispatched chains: every stage, in order."""

from __future__ import annotations

import json

import pytest

from pipeline import chains
from pipeline.settings import STAGES
from tests.bridge.conftest import Case
from tests.bridge.noop_app import LOG_KEY

pytestmark = pytest.mark.integration


def test_a_worker_runs_every_stage_of_dispatched_chains_in_order(make_case) -> None:
    case: Case = make_case()
    app = chains.make_app(case.settings)
    jobs = [(f"{case.prefix}-job{i}", i * 3) for i in range(4)]
    jobs.append((f"{case.prefix}-odd id'\"", 5))
    for task_id, priority in jobs:
        chains.dispatch_one(app, task_id, priority)
    expected = [t for t, _ in jobs]

    worker = case.worker()
    case.wait(lambda: case.redis.llen(LOG_KEY) >= 5 * len(expected), 90,
             "every stage of every chain to run")
    assert case.stop(worker) == 0
    ran: dict[str, list[tuple[str, str]]] = {}
    for line in case.redis.lrange(LOG_KEY, 0, -1):
        task_id, stage, celery_id = json.loads(line)
        ran.setdefault(task_id, []).append((stage, celery_id))
    assert sorted(ran) == sorted(expected)
    for task_id, steps in ran.items():
        assert [stage for stage, _ in steps] == list(STAGES)  # in chain order, each once
        assert [cid for _, cid in steps] == [f"{task_id}:{stage}" for stage in STAGES]
