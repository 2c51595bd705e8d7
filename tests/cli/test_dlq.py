"""``dlq list`` / ``dlq replay`` on the bridge's real dead letters: filters by code, a dry
run that sends nothing, duplicates named and skipped, ``--new-id`` linking the new task."""

from __future__ import annotations

import json
import time
import uuid

from kafka import KafkaProducer

from tests.cli.conftest import CliStack


def letters(cs: CliStack, *args: str) -> list[dict]:
    result = cs.invoke("dlq", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_and_replay(cli_stack: CliStack) -> None:
    cs = cli_stack
    p = f"dl-{uuid.uuid4().hex[:6]}"
    bad = {  # task id -> message value; each rejected at the door, each with its code
        f"{p}-nojson": b'{"task_id": "%s-nojson", "image_url": ' % p.encode(),
        f"{p}-noaudio": json.dumps({"task_id": f"{p}-noaudio",
                                    "image_url": "/uploads/a.jpg"}).encode(),
        f"{p}-type": json.dumps({"task_id": f"{p}-type", "image_url": "/uploads/a.jpg",
                                 "audio_url": "/uploads/a.wav",
                                 "config": {"inference_steps": "many"}}).encode(),
    }
    anonymous = b"not json at all " + p.encode()  # no task id to read: no row
    producer = KafkaProducer(acks="all", **cs.settings.kafka_client_config())
    for task_id, value in bad.items():
        producer.send(cs.topic, key=task_id.encode(), value=value,
                      headers=[("trace", b"t-" + task_id.encode())])
    producer.send(cs.topic, key=p.encode(), value=anonymous)
    producer.flush()
    producer.close()
    deadline = time.monotonic() + 60
    mine: list[dict] = []
    while time.monotonic() < deadline and len(mine) < 4:
        mine = [e for e in letters(cs) if (e["task_id"] or "").startswith(p)
                or e["value_bytes"] == len(anonymous)]
        time.sleep(0.5)
    assert len(mine) == 4, mine
    codes = {e["task_id"]: e["code"] for e in mine}
    assert codes == {f"{p}-nojson": "message.invalid_json",
                     f"{p}-noaudio": "message.missing_field",
                     f"{p}-type": "message.wrong_type", None: "message.invalid_json"}
    assert all(e["original"]["topic"] == cs.topic for e in mine)
    assert [e["task_id"] for e in letters(cs, "--code", "message.missing_field")
            if (e["task_id"] or "").startswith(p)] == [f"{p}-noaudio"]
    assert {e["task_id"] for e in letters(cs, "--code", "message.")} >= set(bad)
    table = cs.invoke("dlq", "list", "--task-id", f"{p}-type").stdout
    assert f"{p}-type" in table and "message.wrong_type" in table

    # A dry run sends nothing and says that each known id would be a duplicate.
    dry = cs.invoke("dlq", "replay", "--code", "message.", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    steps = {s["task_id"]: s for s in json.loads(dry.stdout)["steps"]
             if (s["task_id"] or "").startswith(p)}
    assert set(steps) == set(bad)
    assert all(s["action"] == "skip" and s["reason"].startswith("duplicate: ")
               for s in steps.values())
    human = cs.invoke("dlq", "replay", "--task-id", f"{p}-noaudio", "--dry-run").stdout
    assert "duplicate" in human and "dry run: nothing sent" in human

    # --new-id sends it as a new task linked to the old one, headers kept.
    sent = cs.invoke("dlq", "replay", "--task-id", f"{p}-type", "--new-id", "--json")
    assert sent.exit_code == 0, sent.output
    step, = json.loads(sent.stdout)["steps"]
    assert step["action"] == "sent" and step["new_task_id"] == f"{p}-type.retry1"
    row = cs.wait_final(f"{p}-type.retry1", timeout_s=60)
    assert row["status"] == "rejected" and row["error_code"] == "message.wrong_type"
    replayed = [e for e in letters(cs, "--task-id", f"{p}-type.retry1")]
    assert len(replayed) == 1 and replayed[0]["original"]["topic"] == cs.topic

    # A message with no readable id has no row: a replay sends it as it is.
    dry_all = json.loads(cs.invoke("dlq", "replay", "--dry-run", "--json").stdout)["steps"]
    plain = [s for s in dry_all if s["task_id"] is None and s["action"] == "would send"]
    assert plain and all(s["topic"] == cs.topic for s in plain)
