"""``sonic-pipeline submit``: local inputs uploaded to the object store, the job produced in
the documented shape, and ``--wait`` followed to the end, in a real pseudo-terminal."""

from __future__ import annotations

import json
import re

import pytest

from kafka import KafkaConsumer

from pipeline.console.submit import upload_store
from tests.cli.conftest import BIN, CliStack, RealRun, plain, run_pty


def test_wait_draws_the_stages_and_prints_the_result_url(cli_stack: CliStack,
                                                         real_run: RealRun) -> None:
    out = real_run.done_output
    assert real_run.done_rc == 0, out + cli_stack.logs()
    assert f"submitted {real_run.done} to {cli_stack.topic}" in out
    # The live bar named the stages it saw (polled: a short one may pass unseen), with a
    # percentage and the time elapsed.
    seen = {stage for stage in ("preprocess", "gpu", "encode", "upload") if stage in out}
    assert len(seen) >= 2, out
    assert re.search(r"\b\d{1,3}%", out) and re.search(r"\d:\d\d:\d\d", out), out
    row = cli_stack.row(real_run.done)
    assert row["status"] == "completed" and row["result_url"]
    assert f"completed {real_run.done}: {row['result_url']}" in out


def test_local_files_are_uploaded_and_the_job_names_them(cli_stack: CliStack,
                                                         real_run: RealRun) -> None:
    payload = cli_stack.row(real_run.done)["payload"]
    bucket = cli_stack.settings.upload_bucket
    assert payload["image_url"] == f"s3://{bucket}/uploads/{real_run.done}/image.jpg"
    assert payload["audio_url"] == f"s3://{bucket}/uploads/{real_run.done}/audio.wav"
    store = upload_store(cli_stack.settings)
    for key in (f"uploads/{real_run.done}/image.jpg", f"uploads/{real_run.done}/audio.wav"):
        assert store.exists(key), key
    assert payload["config"]["min_resolution"] == 128 and payload["config"]["seed"] == 3


def test_wait_on_a_failing_job_prints_its_code_and_exits_1(cli_stack: CliStack,
                                                           real_run: RealRun) -> None:
    result = real_run.failed_result
    assert result.exit_code == 1, result.output + cli_stack.logs()
    assert result.stdout.strip().startswith(f"failed {real_run.failed}: image.no_face: ")
    # Not a terminal: one plain line per change of stage, no escape sequences.
    assert f"{real_run.failed}: submitted" in result.stderr or \
        f"{real_run.failed}: preprocess" in result.stderr, result.stderr
    assert "\x1b[" not in result.output


def test_ctrl_c_leaves_the_job_running_and_says_how_to_follow_it(cli_stack: CliStack) -> None:
    task_id = f"{cli_stack.topic}-interrupted"
    rc, output = run_pty([str(BIN), "submit", "--image", str(cli_stack.face), "--audio",
                          str(cli_stack.speech), "--task-id", task_id, "--min-resolution",
                          "128", "--inference-steps", "2", "--wait"], cli_stack.env,
                         interrupt=lambda seen: f"submitted {task_id}" in plain(seen))
    out = plain(output)
    assert rc == 130, out
    assert f"{task_id} keeps running; follow it with `sonic-pipeline status {task_id}`" in out
    assert "Traceback" not in out
    assert cli_stack.wait_final(task_id)["status"] == "completed"


def test_without_wait_it_prints_where_the_message_went(cli_stack: CliStack) -> None:
    """URLs go as they are (nothing uploaded); the record is the documented message."""
    topic = f"{cli_stack.topic}-plain"
    result = cli_stack.invoke("submit", "--image", "https://img.example.com/a.jpg", "--audio",
                              "/uploads/x/a.wav", "--task-id", "plain-1", "--priority", "2",
                              "--tenant", "acme", "--ordering-key", "k1",
                              SONIC_TOPIC_TASKS=topic)
    assert result.exit_code == 0, result.output
    sent = json.loads(result.stdout)
    assert (sent["task_id"], sent["topic"]) == ("plain-1", topic)
    consumer = KafkaConsumer(topic, auto_offset_reset="earliest", consumer_timeout_ms=10000,
                             **cli_stack.settings.kafka_client_config())
    records = []
    for record in consumer:
        records.append(record)
        break
    consumer.close()
    assert records[0].key == b"k1" and records[0].offset == sent["offset"]
    message = json.loads(records[0].value)
    assert message == {"task_id": "plain-1", "audio_url": "/uploads/x/a.wav",
                       "image_url": "https://img.example.com/a.jpg",
                       "config": {"min_resolution": 512, "inference_steps": 25},
                       "tenant": "acme", "priority": 2, "ordering_key": "k1"}


def test_bad_options_are_usage_errors(cli_stack: CliStack) -> None:
    for args in (["submit", "--image", "a.jpg"], ["submit", "--image", "a", "--audio", "b",
                                                 "--priority", "12"],
                 ["list", "--status", "nope"], ["list", "--since", "yesterday-ish"],
                 ["submit", "--image", "a", "--audio", "b", "--wait", "--timeout", "-5"],
                 ["submit", "--image", "a", "--audio", "b", "--wait", "--timeout", "0"],
                 ["submit", "--image", "a", "--audio", "b", "--timeout", "3"],
                 ["housekeeping", "--older-than", "-5"]):
        result = cli_stack.invoke(*args)
        assert result.exit_code == 2, (args, result.output)


def test_an_upload_the_workers_could_not_read_is_warned_about(cli_stack: CliStack) -> None:
    """The upload bucket outside SONIC_INPUT_BUCKETS: the job still goes (the workers' own
    settings decide), with one warning line naming the setting."""
    topic = f"{cli_stack.topic}-warn"
    result = cli_stack.invoke("submit", "--image", str(cli_stack.face), "--audio",
                              "https://h.example.com/a.wav", "--task-id", "warn-1",
                              SONIC_TOPIC_TASKS=topic, SONIC_INPUT_BUCKETS="somewhere-else")
    assert result.exit_code == 0, result.output
    warning, = result.stderr.strip().splitlines()
    bucket = cli_stack.settings.upload_bucket
    assert warning == (f"sonic-pipeline: warning: the uploaded image s3://{bucket}/uploads/"
                       f"warn-1/image.jpg is not readable with these settings: s3://{bucket}/"
                       "uploads/warn-1/image.jpg is outside SONIC_INPUT_BUCKETS")
    assert json.loads(result.stdout)["image_url"] == f"s3://{bucket}/uploads/warn-1/image.jpg"


def _uploaded(cli_stack: CliStack, task_id: str) -> list[str]:
    store = upload_store(cli_stack.settings)
    return [key for key in (f"uploads/{task_id}/image.jpg", f"uploads/{task_id}/audio.wav")
            if store.exists(key)]


def test_a_malformed_task_id_is_refused_before_any_upload(cli_stack: CliStack) -> None:
    for bad in ("../etc/passwd", ".hidden", "a" * 129, "a/b", "sp ace", "é", "a\x00b"):
        result = cli_stack.invoke("submit", "--image", str(cli_stack.face), "--audio",
                                  str(cli_stack.speech), "--task-id", bad)
        assert result.exit_code == 2, (bad, result.output)
        assert result.stderr.startswith("sonic-pipeline: task.invalid_id: not a task id"), \
            result.stderr
        assert "nothing was uploaded or sent" in result.stderr
        assert result.stdout == "" and "Traceback" not in result.output


@pytest.mark.parametrize("args, code", [
    (["--min-resolution", "5"], "message.out_of_range"),
    (["--seed", "-5"], "message.out_of_range"),
    (["--seed", "99999999999"], "message.out_of_range"),
    (["--dynamic-scale", "nan"], "message.out_of_range"),
    (["--motion-scale", "inf"], "message.out_of_range"),
    (["--inference-steps", "0"], "message.out_of_range"),
    (["--engine", "bogus"], "message.out_of_range"),
    (["--callback-url", "ftp://x.example.com/hook"], None),
])
def test_a_bad_field_is_refused_with_the_door_s_code_before_any_upload(
        cli_stack: CliStack, args: list[str], code: str | None) -> None:
    """The bridge's own check, in the CLI: nothing is uploaded nor sent to Kafka."""
    from pipeline.errors import CODES

    task_id = f"door-{abs(hash(tuple(args))) % 10**8}"
    topic = f"{cli_stack.topic}-door"
    result = cli_stack.invoke("submit", "--image", str(cli_stack.face), "--audio",
                              str(cli_stack.speech), "--task-id", task_id, *args,
                              SONIC_TOPIC_TASKS=topic)
    assert result.exit_code == 1, (args, result.output)
    said = result.stderr.strip()
    assert said.startswith("sonic-pipeline: ") and "Traceback" not in result.output, said
    found = said.split(": ")[1]
    assert found in CODES and (code is None or found == code), said
    assert result.stdout == "" and _uploaded(cli_stack, task_id) == []
