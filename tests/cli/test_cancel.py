"""``sonic-pipeline cancel`` as the control topic's cancel, on the real Kafka, PostgreSQL and
a real bridge: an id not admitted yet is cancelled ahead (its message, when it comes, never
runs; its ``cancelled`` callback is owed to the URL it names), a final job is left as it is,
a malformed id is refused with ``task.invalid_id`` (exit 2) and nothing is cancelled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

from tests.bridge import conftest as bridge_support
from tests.bridge.conftest import Case

#: The bridge tests' fixture: a topic, group, Redis DB and bridge processes of its own.
make_case = bridge_support.make_case

pytestmark = pytest.mark.integration


def cli(case: Case, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "cancel", *argv],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **case.env))


def test_cancel_before_the_message_comes_and_of_final_jobs(
        make_case: Callable[..., Case], db_engine: Engine) -> None:
    case = make_case(partitions=1)
    p = case.prefix
    ahead = [f"{p}-hooked-1", f"{p}-hooked-2", f"{p}-quiet", f"{p}-never"]
    final = {f"{p}-done": "completed", f"{p}-broke": "failed", f"{p}-gone": "expired"}
    with db_engine.begin() as conn:
        for task_id, status in final.items():
            conn.execute(text("INSERT INTO tasks (task_id, kafka_topic, status, finished_at) "
                              "VALUES (:t, :topic, :s, now())"),
                         {"t": task_id, "topic": case.topic, "s": status})

    # A malformed id anywhere in the call: refused, nothing cancelled, not even the others.
    for bad in ("../etc", ".hidden", "a" * 129, "sp ace", "é"):
        proc = cli(case, ahead[0], bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert proc.stderr.startswith("sonic-pipeline: task.invalid_id: "), proc.stderr
        assert proc.stdout == ""
    assert case.count() == len(final)

    proc = cli(case, *ahead, *final, "--reason", "the user left")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        **{t: "cancelled_before_admission" for t in ahead},
        **{t: f"already final: {s}" for t, s in final.items()}}
    again = cli(case, ahead[0], f"{p}-done")  # at-least-once: a second cancel is harmless
    assert json.loads(again.stdout) == {ahead[0]: "already final: cancelled",
                                        f"{p}-done": "already final: completed"}

    # The messages come after the cancel: a bridge admits them as duplicates of the
    # cancelled rows; they never run, and the callback is owed where a URL is named.
    runs = f"{p}-runs"
    quiet = json.dumps({"task_id": ahead[2], "audio_url": "/uploads/user1/audio.mp3",
                        "image_url": "/uploads/user1/avatar.jpg"}).encode()
    case.produce([(ahead[2].encode(), quiet)] + case.jobs([ahead[0], ahead[1], runs]))
    bridge = case.bridge()
    case.wait(lambda: case.rows().get(runs, {}).get("status") == "queued"
              and all(case.rows()[t]["callback_status"] == "queued" for t in ahead[:2]),
              60, "the running job dispatched, the cancelled jobs' callbacks published")
    assert case.stop(bridge) == 0
    rows = case.rows()
    for task_id in ahead:
        row = rows[task_id]
        assert (row["status"], row["error_code"], row["error_message"]) == (
            "cancelled", "task.cancelled", "the user left"), task_id
        assert row["started_at"] is None and row["queued_at"] is None, task_id
    assert [rows[t]["callback_url"] for t in ahead[:2]] == ["https://api.example.com/callback"] * 2
    assert (rows[ahead[2]]["callback_url"], rows[ahead[2]]["callback_status"]) == (None, "none")
    assert set(case.events("duplicate")) == set(ahead[:3])
    assert (rows[ahead[3]]["kafka_offset"], rows[ahead[3]]["callback_status"]) == (None, "none")
    assert {t: rows[t]["status"] for t in final} == final
    assert set(case.chains()) == {runs}  # only the job never cancelled was dispatched


def test_a_reason_over_500_characters_is_cut_and_the_user_told(
        make_case: Callable[..., Case], db_engine: Engine) -> None:
    case = make_case(partitions=1)
    task_id = f"{case.prefix}-long"
    proc = cli(case, task_id, "--reason", "x" * 600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {task_id: "cancelled_before_admission"}
    assert "the reason is cut to its first 500 characters (it has 600)" in proc.stderr
    assert case.rows()[task_id]["error_message"] == "x" * 500


@pytest.mark.parametrize("verb", ["status", "show", "events", "retry"])
def test_every_verb_answers_a_malformed_id_as_cancel_does(make_case: Callable[..., Case],
                                                           verb: str) -> None:
    case = make_case(partitions=1)
    for bad in ("../etc", ".hidden", "a" * 129, "sp ace"):
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", verb, bad],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, **case.env))
        assert proc.returncode == 2, (verb, bad, proc.stderr)
        assert proc.stderr.startswith("sonic-pipeline: task.invalid_id: not a task id"), \
            proc.stderr
        assert proc.stdout == "" and "Traceback" not in proc.stderr
