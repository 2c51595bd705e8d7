"""``sonic-pipeline topics create``: the pipeline's topics, created when missing.

The one table of them (the local stack's ``ops/services/topics.py`` creates from it too):
the task topic and the DLQ with ``SONIC_TOPIC_PARTITIONS`` partitions (the DLQ kept 30
days), the control topic with one partition (commands stay in order), the status topic
(kept 7 days). A topic that exists is left as it is; a partition count that differs from
the settings is reported.
"""

from __future__ import annotations

from typing import Any

from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from pipeline.console.kafka import admin
from pipeline.settings import Settings

DAY_MS = 24 * 3600 * 1000


def wanted(settings: Settings) -> dict[str, dict[str, Any]]:
    """Topic name -> partitions and configs."""
    parts = settings.topic_partitions
    return {
        settings.topic_tasks: {"partitions": parts, "configs": {}},
        settings.topic_dlq: {"partitions": parts,
                             "configs": {"retention.ms": str(30 * DAY_MS)}},
        settings.topic_control: {"partitions": 1, "configs": {}},
        settings.topic_status: {"partitions": parts,
                                "configs": {"retention.ms": str(7 * DAY_MS)}},
    }


def create(settings: Settings) -> list[dict[str, Any]]:
    """Create the missing topics; one ``{"topic", "partitions", "outcome"}`` per topic,
    ``outcome`` one of ``created``, ``exists``, ``exists with N partitions (settings: M)``.
    Raises kafka-python's errors."""
    specs = wanted(settings)
    client = admin(settings)
    try:
        present = set(client.list_topics()) & set(specs)
        counts = ({t["topic"] if "topic" in t else t["name"]: len(t["partitions"])
                   for t in client.describe_topics(sorted(present))} if present else {})
        missing = [NewTopic(name, spec["partitions"], settings.topic_replication,
                            topic_configs=spec["configs"])
                   for name, spec in specs.items() if name not in present]
        created = set()
        if missing:
            try:
                client.create_topics(missing, wait_for_metadata=True)
                created = {t.name for t in missing}
            except TopicAlreadyExistsError:
                pass  # made by someone else meanwhile
    finally:
        client.close()
    out = []
    for name, spec in specs.items():
        if name in created:
            outcome = "created"
        elif counts.get(name, spec["partitions"]) != spec["partitions"]:
            outcome = f"exists with {counts[name]} partitions (settings: {spec['partitions']})"
        else:
            outcome = "exists"
        out.append({"topic": name, "partitions": counts.get(name, spec["partitions"]),
                    "outcome": outcome})
    return out
