"""``sonic-pipeline top``: one frame (``--once``, ``--json``) with exact counts, from rows put in
known states on a topic of their own, and after the real run on the stack's topic."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.cli.conftest import CliStack, RealRun


@pytest.fixture
def fleet_rows(cli_stack: CliStack) -> Iterator[str]:
    topic = f"top-{uuid.uuid4().hex[:8]}"
    rows = [("a", "received", None, None, 300), ("a", "received", None, None, 10),
            ("a", "waiting", None, None, 20), ("b", "queued", "gpu", None, 30),
            ("b", "running", "gpu", "gpu", 40), ("b", "running", "encode", "encode", 50),
            (None, "completed", "upload", None, 900), (None, "failed", "gpu", None, 900)]
    with cli_stack.db_engine.begin() as conn:
        for i, (tenant, status, stage, lease, age) in enumerate(rows):
            conn.execute(text("""
                INSERT INTO tasks (task_id, kafka_topic, tenant, status, stage, lease_owner,
                                   lease_stage, lease_expires_at, received_at)
                VALUES (:id, :topic, :tenant, :status, :stage, :owner, :lease,
                        now() + interval '60 s', now() - make_interval(secs => :age))"""),
                {"id": f"{topic}-{i}", "topic": topic, "tenant": tenant, "status": status,
                 "stage": stage, "owner": f"{lease}@w" if lease else None, "lease": lease,
                 "age": age})
    yield topic
    with cli_stack.db_engine.begin() as conn:
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
        conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})


def test_one_frame_counts_the_fleet(cli_stack: CliStack, fleet_rows: str) -> None:
    result = cli_stack.invoke("top", "--json", SONIC_TOPIC_TASKS=fleet_rows)
    assert result.exit_code == 0, result.output
    frame = json.loads(result.stdout)
    assert frame["backlog"] == {"a": {"received": 2, "waiting": 1, "queued": 0, "running": 0},
                                "b": {"received": 0, "waiting": 0, "queued": 1, "running": 2}}
    assert frame["totals"] == {"received": 2, "waiting": 1, "queued": 1, "running": 2}
    assert (frame["pools"]["gpu"]["queued"], frame["pools"]["gpu"]["running"]) == (1, 1)
    assert (frame["pools"]["cpu"]["queued"], frame["pools"]["cpu"]["running"]) == (0, 1)
    assert frame["gpu"] == {"busy": 1, "slots": cli_stack.settings.gpu_slots}
    assert 299 <= frame["oldest_s"] < 400 and 299 <= frame["oldest_runnable_s"] < 400
    assert frame["lag"]["total"] == 0  # a topic no one produced to


def test_once_after_the_real_run(cli_stack: CliStack, real_run: RealRun) -> None:
    result = cli_stack.invoke("top", "--once")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for part in ("sonic-pipeline top", f"topic {cli_stack.topic}", "lag ", "gpu busy",
                 "oldest job", "backlog by tenant", "in flight per pool", "cpu",
                 "preprocess,encode"):
        assert part in out, (part, out)
    assert "\x1b[" not in out
    frame = json.loads(cli_stack.invoke("top", "--json").stdout)
    assert frame["lag"]["group"] == cli_stack.settings.consumer_group
    assert frame["lag"]["total"] == 0  # the bridge committed everything it read


def test_the_live_view_redraws_until_ctrl_c(cli_stack: CliStack) -> None:
    from tests.cli.conftest import BIN, plain, run_pty

    rc, output = run_pty([str(BIN), "top", "--interval", "0.3"], cli_stack.env, timeout_s=60,
                         interrupt=lambda seen: plain(seen).count("in flight per pool") >= 3)
    out = plain(output)
    assert rc == 0, out
    assert out.count("in flight per pool") >= 3 and "Traceback" not in out
    assert "\x1b[" in output  # drawn in place on a terminal
