"""The verbs' pure parts: what a DLQ replay does with each kind of dead letter, ``--since``
and durations for people. No service needed."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import click
import pytest

from pipeline.console import dlq
from pipeline.console.output import seconds
from pipeline.console.verbs import parse_since


def record(value: bytes | None, offset: int, **headers: str) -> SimpleNamespace:
    base = {"sonic-original-topic": "jobs", "sonic-original-partition": "3",
            "sonic-original-offset": str(offset * 10), "sonic-error-code": "message.wrong_type",
            "sonic-error-message": "bad"}
    base.update(headers)
    return SimpleNamespace(partition=0, offset=offset, timestamp=1_700_000_000_000 + offset,
                           key=b"k", value=value,
                           headers=[("trace", b"t1"), *((k, v.encode()) for k, v in base.items())])


LETTERS = [
    record(b'{"task_id": "known", "image_url": "x"}', 1, **{"sonic-task-id": "known"}),
    record(b'{"task_id": "fresh", "image_url": "x"}', 2, **{"sonic-task-id": "fresh"}),
    record(b"", 3, **{"sonic-value-dropped": "too_large", "sonic-task-id": "big"}),
    record(b"not json", 4, **{"sonic-error-code": "message.invalid_json"}),
    record(b'{"task_id": "known2", "image_url": ', 5,
           **{"sonic-error-code": "message.invalid_json"}),
]


def plan(new_id: bool) -> dict[int, dict]:
    items = dlq.select(LETTERS)
    steps = dlq.plan(items, lambda ids: {i: "rejected" for i in ids if i.startswith("known")},
                     (lambda old: f"{old}.retry1") if new_id else None, "default-topic")
    return {int(s["dlq"].split(":")[1]): s for s in steps}


def test_entries_read_the_dead_letter_headers() -> None:
    first, *_, last = dlq.select(LETTERS)
    assert first["original"] == {"topic": "jobs", "partition": 3, "offset": 10}
    assert first["_headers"] == [("trace", b"t1")]  # the sonic-* headers are ours to redo
    assert last["task_id"] == "known2"  # read from a truncated value
    assert [e["offset"] for e in dlq.select(LETTERS, code="message.invalid_json")] == [4, 5]
    assert [e["offset"] for e in dlq.select(LETTERS, code="message.")] == [1, 2, 3, 4, 5]
    assert [e["offset"] for e in dlq.select(LETTERS, task_id="fresh")] == [2]


def test_a_replay_skips_duplicates_and_dropped_values_and_says_why() -> None:
    steps = plan(new_id=False)
    assert steps[1]["action"] == "skip" and steps[1]["reason"].startswith(
        "duplicate: task known already has a row (rejected)")
    assert steps[5]["action"] == "skip" and "duplicate" in steps[5]["reason"]
    assert steps[3]["action"] == "skip" and "too_large" in steps[3]["reason"]
    for offset in (2, 4):  # no row: sent as they were, to the original topic
        assert steps[offset]["action"] == "send" and steps[offset]["topic"] == "jobs"
        sent = steps[offset]["record"]
        assert sent["key"] == b"k" and sent["value"] == LETTERS[offset - 1].value
        assert sent["headers"] == [("trace", b"t1"), ("sonic-replayed-from",
                                                      f"0:{offset}".encode())]


def test_new_id_links_the_new_task_and_refuses_what_it_cannot_rename() -> None:
    steps = plan(new_id=True)
    message = json.loads(steps[1]["record"]["value"])
    assert steps[1]["new_task_id"] == "known.retry1"
    assert message == {"task_id": "known.retry1", "image_url": "x", "retry_of": "known",
                       "metadata": {"retry_of": "known"}}
    assert steps[5]["action"] == "skip" and "not JSON" in steps[5]["reason"]


def test_since_takes_durations_and_iso_times() -> None:
    now = datetime.now(timezone.utc)
    for text, ago in (("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5d", 129600)):
        assert abs((now - parse_since(text)) - timedelta(seconds=ago)) < timedelta(seconds=5)
    assert parse_since("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5,
                                                          tzinfo=timezone.utc)
    assert parse_since("2026-01-02T03:04:05+02:00").utcoffset() == timedelta(hours=2)
    for bad in ("yesterday", "5 minutes", "-3h", "1w"):
        with pytest.raises(click.BadParameter):
            parse_since(bad)


def test_durations_for_people() -> None:
    assert [seconds(x) for x in (None, 0.421, 12.34, 245, 7380, 270000)] == [
        "-", "0.42s", "12.3s", "4m05s", "2h03m", "3d03h"]


@pytest.mark.parametrize("port", ["0", "99999", "-1", "http"])
def test_serve_refuses_a_port_out_of_range_before_binding(port: str) -> None:
    import subprocess
    import sys

    from click.testing import CliRunner

    from pipeline.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--port", port])
    assert result.exit_code == 2 and "'--port'" in result.output, result.output
    module = subprocess.run([sys.executable, "-m", "pipeline.http", "--port", port],
                            capture_output=True, text=True, timeout=60)
    assert module.returncode == 2 and "--port" in module.stderr, module.stderr
    assert "Traceback" not in module.stderr + result.output


def test_render_refuses_an_output_it_could_not_write_before_rendering(tmp_path) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    for output, said in ((str(tmp_path), "is a directory"),
                         (f"{tmp_path}/", "is a directory"),
                         (str(tmp_path / "missing" / "v.mp4"), "does not exist")):
        result = CliRunner().invoke(cli, ["render", "--image", "face.jpg", "--audio",
                                          "speech.wav", "-o", output])
        assert result.exit_code == 2 and said in result.output, result.output
    assert not (tmp_path / "missing").exists()
