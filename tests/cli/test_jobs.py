"""``list`` (filters), ``events`` (the timeline), ``cancel`` and ``retry`` (a new task linked
to the old one) on the real run's jobs."""

from __future__ import annotations

import json
import time

from tests.cli.conftest import CliStack, RealRun


def listed(cs: CliStack, *args: str) -> list[str]:
    result = cs.invoke("list", "--json", "--topic", cs.topic, *args)
    assert result.exit_code == 0, result.output
    return [r["task_id"] for r in json.loads(result.stdout)]


def test_list_filters_by_status_tenant_code_and_age(cli_stack: CliStack,
                                                    real_run: RealRun) -> None:
    cs = cli_stack
    assert {real_run.done, real_run.failed} <= set(listed(cs))
    assert real_run.failed in listed(cs, "--status", "failed")
    assert real_run.done not in listed(cs, "--status", "failed")
    assert real_run.done in listed(cs, "--status", "queued,completed")
    assert real_run.done in listed(cs, "--status", "failed", "--status", "completed")
    assert listed(cs, "--tenant", "t-cli") == [real_run.failed]
    assert real_run.failed in listed(cs, "--code", "image.no_face")
    assert real_run.failed in listed(cs, "--code", "image.")
    assert real_run.failed not in listed(cs, "--code", "audio.*")
    assert real_run.done in listed(cs, "--since", "1h")
    assert listed(cs, "--since", "2099-01-01T00:00:00") == []
    table = cs.invoke("list", "--topic", cs.topic, "--status", "failed").stdout
    assert real_run.failed in table and "image.no_face" in table and "\x1b[" not in table


def test_events_are_the_timeline(cli_stack: CliStack, real_run: RealRun) -> None:
    result = cli_stack.invoke("events", real_run.done, "--json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    names = [(e["stage"], e["event"]) for e in found]
    assert names[0] == (None, "admitted")
    for stage in ("preprocess", "gpu", "encode", "upload"):
        assert (stage, "started") in names and (stage, "succeeded") in names
    assert [e["at"] for e in found] == sorted(e["at"] for e in found)
    # the dispatcher's change, told by the status outbox, sits in its place
    assert [e["event"] for e in found if e["source"] == "status_outbox"] == ["queued"]
    assert names.index((None, "admitted")) < names.index(("preprocess", "queued")) \
        < names.index(("preprocess", "started"))
    table = cli_stack.invoke("events", real_run.done).stdout
    assert f"{real_run.done}: {len(found)} events" in table and "succeeded" in table
    missing = cli_stack.invoke("events", "no-such-task")
    assert missing.exit_code == 1 and "task.not_found" in missing.stderr


def test_retry_makes_a_new_task_linked_to_the_old_one(cli_stack: CliStack,
                                                      real_run: RealRun) -> None:
    cs = cli_stack
    result = cs.invoke("retry", real_run.failed, "--json")
    assert result.exit_code == 0, result.output
    sent = json.loads(result.stdout)
    new = f"{real_run.failed}.retry1"
    assert sent["task_id"] == new and sent["retry_of"] == real_run.failed
    row = cs.wait_final(new)
    assert row["payload"]["retry_of"] == real_run.failed
    assert row["payload"]["metadata"]["retry_of"] == real_run.failed
    assert row["payload"]["image_url"] == cs.row(real_run.failed)["payload"]["image_url"]
    assert row["tenant"] == "t-cli" and row["error_code"] == "image.no_face"
    info = json.loads(cs.invoke("status", new, "--json").stdout)
    assert info["retry_of"] == real_run.failed
    again = cs.invoke("retry", real_run.failed, "--json")
    assert json.loads(again.stdout)["task_id"] == f"{real_run.failed}.retry2"
    cs.wait_final(f"{real_run.failed}.retry2")


def test_retry_refuses_what_it_cannot_retry(cli_stack: CliStack, real_run: RealRun) -> None:
    cs = cli_stack
    cases = {real_run.done: "task.not_retryable",  # completed, no --force
             "no-such-task": "task.not_found"}
    for task_id, code in cases.items():
        result = cs.invoke("retry", task_id)
        assert result.exit_code == 1, result.output
        line, = result.stderr.strip().splitlines()
        assert line.startswith(f"sonic-pipeline: {code}: "), line


def test_cancel_then_retry_a_job_in_flight(cli_stack: CliStack, real_run: RealRun) -> None:
    """A running job cannot be retried until cancelled; once cancelled, it can."""
    cs = cli_stack
    task_id = f"{cs.topic}-long"
    sent = cs.invoke("submit", "--image", str(cs.face), "--audio", str(cs.speech),
                     "--task-id", task_id, "--min-resolution", "128", "--inference-steps", "2")
    assert sent.exit_code == 0, sent.output
    deadline = time.monotonic() + 30
    while cs.row(task_id) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = cs.invoke("retry", task_id)
    if cs.row(task_id)["status"] not in ("completed", "failed"):
        assert refused.exit_code == 1 and "not final: cancel it first" in refused.stderr
    cancelled = cs.invoke("cancel", task_id, "--reason", "operator test")
    assert cancelled.exit_code == 0
    outcome = json.loads(cancelled.stdout)[task_id]
    assert outcome in ("cancelled", "cancelled_running") or outcome.startswith("already final")
    if outcome.startswith("cancelled"):
        assert cs.row(task_id)["status"] == "cancelled"
        retried = cs.invoke("retry", task_id, "--json")
        assert retried.exit_code == 0, retried.output
        assert cs.wait_final(f"{task_id}.retry1")["status"] == "completed"
