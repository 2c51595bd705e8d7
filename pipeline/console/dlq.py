"""``sonic-pipeline dlq list`` / ``dlq replay``: the dead-letter topic, read and re-published.

A dead letter carries the original key, value and headers plus ``sonic-original-topic``,
``-partition``, ``-offset``, ``sonic-error-code``, ``sonic-error-message`` and
``sonic-task-id`` (README, "Topics"). A replay sends the original key, value and headers
(the ``sonic-*`` ones removed, ``sonic-replayed-from: <dlq partition>:<offset>`` added) to
the original topic, after a fix (a setting, an allow-list, a bucket).

Task ids are idempotent: a message whose task id already has a row (admitted, or the
``rejected`` row of its first try) would be a duplicate and admit nothing, so it is not
sent and the answer says so; ``new_id`` sends it as a new task ``<id>.retry<n>`` with
``retry_of`` (top level and in ``metadata``) naming the old one, as ``retry`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from pipeline.job_ids import peek_task_id, strip_bom

HEADER_PREFIX = "sonic-"
REPLAYED_FROM = "sonic-replayed-from"


def _header(headers: list[tuple[str, bytes]], name: str) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("utf-8", "replace") if value is not None else None
    return None


def entry(record: Any) -> dict[str, Any]:
    """A dead letter as a dict (``value`` kept as bytes under ``_value`` for replays)."""
    headers = list(record.headers or [])
    dropped = _header(headers, "sonic-value-dropped")
    task_id = _header(headers, "sonic-task-id") or (
        peek_task_id(record.value) if record.value and not dropped else None)
    partition = _header(headers, "sonic-original-partition")
    offset = _header(headers, "sonic-original-offset")
    return {
        "partition": record.partition, "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "code": _header(headers, "sonic-error-code"),
        "message": _header(headers, "sonic-error-message"),
        "task_id": task_id,
        "original": {"topic": _header(headers, "sonic-original-topic"),
                     "partition": int(partition) if partition and partition.isdigit() else None,
                     "offset": int(offset) if offset and offset.isdigit() else None},
        "value_dropped": dropped, "value_bytes": len(record.value or b""),
        "_key": record.key, "_value": record.value,
        "_headers": [(k, v) for k, v in headers if not k.startswith(HEADER_PREFIX)],
    }


def matches(item: dict[str, Any], code: str | None, task_id: str | None) -> bool:
    """``code``: an exact code, or a family ending in ``.``/``*`` (``message.``)."""
    if task_id is not None and item["task_id"] != task_id:
        return False
    if code:
        if code.endswith(("*", ".")):
            return (item["code"] or "").startswith(code.rstrip("*"))
        return item["code"] == code
    return True


def select(records: Iterable[Any], code: str | None = None,
           task_id: str | None = None) -> list[dict[str, Any]]:
    return [e for e in map(entry, records) if matches(e, code, task_id)]


def public(item: dict[str, Any]) -> dict[str, Any]:
    """The JSON-safe part of an entry."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


def plan(items: list[dict[str, Any]], known: Callable[[list[str]], dict[str, str]],
         new_id: Callable[[str], str] | None, default_topic: str,
         to_topic: str | None = None) -> list[dict[str, Any]]:
    """What a replay does with each entry: ``action`` is ``send`` or ``skip`` with a
    ``reason``; ``record`` (for sends) holds the topic, key, value and headers.
    ``known`` maps task ids to their status (those with a row); ``new_id`` (when given)
    names the new task of a message whose id has a row."""
    statuses = known([i["task_id"] for i in items if i["task_id"]])
    out = []
    for item in items:
        step = {"dlq": f"{item['partition']}:{item['offset']}", "task_id": item["task_id"],
                "code": item["code"]}
        topic = to_topic or item["original"]["topic"] or default_topic
        value = item["_value"]
        if item["value_dropped"]:
            out.append({**step, "action": "skip",
                        "reason": f"its value was not kept in the DLQ ({item['value_dropped']})"})
            continue
        headers = [*item["_headers"], (REPLAYED_FROM, step["dlq"].encode())]
        if item["task_id"] in statuses:
            status = statuses[item["task_id"]]
            if new_id is None:
                out.append({**step, "action": "skip", "reason": (
                    f"duplicate: task {item['task_id']} already has a row ({status}); the same "
                    "task id is admitted once, so a replay would admit nothing. Pass --new-id "
                    "to send it as a new task linked to the old one")})
                continue
            try:
                message = json.loads(strip_bom(value))
            except ValueError:
                out.append({**step, "action": "skip",
                            "reason": "not JSON: cannot give it a new task id"})
                continue
            fresh = new_id(item["task_id"])
            message.update(task_id=fresh, retry_of=item["task_id"])
            if not isinstance(message.get("metadata"), dict):
                message["metadata"] = {}
            message["metadata"]["retry_of"] = item["task_id"]
            value = json.dumps(message, separators=(",", ":")).encode()
            step["new_task_id"] = fresh
        out.append({**step, "action": "send", "topic": topic,
                    "record": {"key": item["_key"], "value": value, "headers": headers}})
    return out
