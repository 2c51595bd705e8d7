"""``topics create``, ``db upgrade`` and ``serve`` (which hands over to the HTTP service)."""

from __future__ import annotations

import json
import sys
import types
import uuid

import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from tests.cli.conftest import CliStack


def test_topics_create_makes_the_missing_ones_and_leaves_the_rest(cli_stack: CliStack) -> None:
    name = f"tc-{uuid.uuid4().hex[:8]}"
    names = {"SONIC_TOPIC_TASKS": name, "SONIC_TOPIC_DLQ": f"{name}-dlq",
             "SONIC_TOPIC_CONTROL": f"{name}-control", "SONIC_TOPIC_STATUS": f"{name}-status"}
    admin = KafkaAdminClient(**cli_stack.settings.kafka_client_config())
    try:
        admin.create_topics([NewTopic(f"{name}-status", 1, 1)])  # made before, by hand
        first = cli_stack.invoke("topics", "create", "--json", SONIC_TOPIC_PARTITIONS="3",
                                 **names)
        assert first.exit_code == 0, first.output
        outcomes = {t["topic"]: (t["partitions"], t["outcome"]) for t in json.loads(first.stdout)}
        assert outcomes == {name: (3, "created"), f"{name}-dlq": (3, "created"),
                            f"{name}-control": (1, "created"),
                            f"{name}-status": (1, "exists with 1 partitions (settings: 3)")}
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(
            [name, f"{name}-dlq", f"{name}-control"])}
        assert described == {name: 3, f"{name}-dlq": 3, f"{name}-control": 1}
        again = cli_stack.invoke("topics", "create", SONIC_TOPIC_PARTITIONS="3", **names)
        assert again.exit_code == 0 and again.stdout.count(" exists") == 4, again.stdout
    finally:
        admin.delete_topics([name, f"{name}-dlq", f"{name}-control", f"{name}-status"])
        admin.close()


def test_db_upgrade_is_idempotent(cli_stack: CliStack) -> None:
    for _ in range(2):
        result = cli_stack.invoke("db", "upgrade")
        assert result.exit_code == 0, result.output


def test_serve_hands_over_to_the_http_service(cli_stack: CliStack,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Imported only when the verb runs; the settings' address unless given."""
    calls = []
    fake = types.ModuleType("pipeline.http.serve")
    fake.run = lambda host, port: calls.append((host, port))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pipeline.http.serve", fake)
    assert cli_stack.invoke("serve").exit_code == 0
    assert cli_stack.invoke("serve", "--host", "0.0.0.0", "--port", "18999").exit_code == 0
    settings = cli_stack.settings
    assert calls == [(settings.api_host, settings.api_port), ("0.0.0.0", 18999)]
