"""``sonic-pipeline status ID``: one answer per state, from the real run's jobs and from rows
put in each state (on a topic no dispatcher serves)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.cli.conftest import CliStack, RealRun

#: Rows in every non-final state: (name, status, stage, tenant, priority, extra columns).
ROWS = """
INSERT INTO tasks (task_id, kafka_topic, status, stage, tenant, priority, ordering_key,
                   depends_on, received_at, updated_at, progress, lease_owner, lease_stage,
                   lease_expires_at, heartbeat_at, started_at, payload)
VALUES
 (:p || '-first',  :topic, 'running', 'gpu', 'a', 5, :p || '-key', NULL,
  now() - interval '300 s', now(), 40, 'gpu@node-7', 'gpu', now() + interval '60 s', now(),
  now() - interval '30 s', '{}'),
 (:p || '-second', :topic, 'waiting', NULL, 'a', 5, :p || '-key', NULL,
  now() - interval '290 s', now(), 0, NULL, NULL, NULL, NULL, NULL, '{}'),
 (:p || '-deps',   :topic, 'waiting', NULL, 'a', 5, NULL, ARRAY[:p || '-never'],
  now() - interval '280 s', now(), 0, NULL, NULL, NULL, NULL, NULL, '{}'),
 (:p || '-r1',     :topic, 'received', NULL, 'b', 5, NULL, NULL,
  now() - interval '200 s', now(), 0, NULL, NULL, NULL, NULL, NULL, '{}'),
 (:p || '-r2',     :topic, 'received', NULL, 'b', 0, NULL, NULL,
  now() - interval '100 s', now(), 0, NULL, NULL, NULL, NULL, NULL, '{}'),
 (:p || '-r3',     :topic, 'received', NULL, 'c', 5, NULL, NULL,
  now() - interval '50 s', now(), 0, NULL, NULL, NULL, NULL, NULL, '{}'),
 (:p || '-q1',     :topic, 'queued', 'gpu', 'c', 5, NULL, NULL,
  now() - interval '40 s', now() - interval '20 s', 20, NULL, NULL, NULL, NULL, NULL, '{}'),
 (:p || '-q2',     :topic, 'queued', 'gpu', 'c', 5, NULL, NULL,
  now() - interval '30 s', now() - interval '10 s', 20, NULL, NULL, NULL, NULL, NULL, '{}')
"""


@pytest.fixture(scope="module")
def rows(cli_stack: CliStack) -> Iterator[tuple[str, str]]:
    """(topic, id prefix) of the rows above; removed afterwards."""
    prefix = f"st-{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}-topic"
    with cli_stack.db_engine.begin() as conn:
        conn.execute(text(ROWS), {"p": prefix, "topic": topic})
        conn.execute(text("INSERT INTO task_dependencies (task_id, depends_on) "
                          "VALUES (:a, :b)"), {"a": f"{prefix}-deps", "b": f"{prefix}-never"})
    yield topic, prefix
    with cli_stack.db_engine.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})


def status(cs: CliStack, task_id: str) -> tuple[dict, str]:
    as_json = cs.invoke("status", task_id, "--json")
    human = cs.invoke("status", task_id)
    assert as_json.exit_code == human.exit_code
    return json.loads(as_json.stdout), human.stdout


def test_a_completed_job_has_its_url_and_seconds_per_stage(cli_stack: CliStack,
                                                          real_run: RealRun) -> None:
    info, human = status(cli_stack, real_run.done)
    assert info["status"] == "completed" and info["result_url"].startswith("http")
    assert list(info["timings"]["stages_s"]) == ["preprocess", "gpu", "encode", "upload",
                                                 "callback"]
    assert all(s > 0 for s in info["timings"]["stages_s"].values())
    assert info["timings"]["total_s"] >= sum(info["timings"]["stages_s"].values())
    assert f"{real_run.done}  completed" in human and "timings   preprocess" in human


def test_a_failed_job_has_its_code_and_message(cli_stack: CliStack, real_run: RealRun) -> None:
    info, human = status(cli_stack, real_run.failed)
    assert info["status"] == "failed" and info["error"]["code"] == "image.no_face"
    assert info["tenant"] == "t-cli"
    assert f"failed: image.no_face: {info['error']['message']}" in human


def test_unknown_is_not_queued(cli_stack: CliStack) -> None:
    info, human = status(cli_stack, "never-sent-anywhere")
    assert info["status"] == "unknown" and "unknown" in human
    assert cli_stack.invoke("status", "never-sent-anywhere").exit_code == 1


def test_waiting_names_what_it_waits_for(cli_stack: CliStack, rows: tuple[str, str]) -> None:
    _, p = rows
    info, human = status(cli_stack, f"{p}-second")
    assert info["waiting_on"]["previous"]["task_id"] == f"{p}-first"
    assert f"waiting for {p}-first (running), the job before it with ordering key" in human
    info, human = status(cli_stack, f"{p}-deps")
    assert info["waiting_on"]["dependencies"] == {f"{p}-never": None}
    assert f"waiting for {p}-never (not admitted)" in human


def test_runnable_and_queued_jobs_have_their_position(cli_stack: CliStack,
                                                      rows: tuple[str, str]) -> None:
    _, p = rows
    # Tenant b: r2 (priority 0, 100 s old) goes before r1 (priority 5, 200 s old).
    assert status(cli_stack, f"{p}-r2")[0]["backlog"] == {"position": 1, "runnable": 3}
    info, human = status(cli_stack, f"{p}-r1")
    assert info["backlog"] == {"position": 2, "runnable": 3}
    assert "queued in the backlog (not dispatched yet): position 2 in tenant b's order" in human
    assert status(cli_stack, f"{p}-r3")[0]["backlog"]["position"] == 1
    assert status(cli_stack, f"{p}-q1")[0]["queue"] == {"stage": "gpu", "position": 1}
    info, human = status(cli_stack, f"{p}-q2")
    assert info["queue"] == {"stage": "gpu", "position": 2}
    assert "queued for stage gpu: position 2" in human


def test_running_shows_stage_percent_and_worker(cli_stack: CliStack,
                                                rows: tuple[str, str]) -> None:
    _, p = rows
    info, human = status(cli_stack, f"{p}-first")
    assert info["running"]["worker"] == "gpu@node-7" and info["running"]["stage"] == "gpu"
    assert info["progress"] == 40 and 25 < info["running"]["elapsed_s"] < 120
    assert "running gpu at 40% on gpu@node-7" in human
