"""The pipeline's Kafka topics, created when missing (existing topics are left as they are)."""

from __future__ import annotations

from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipeline.console.topics import wanted as topic_specs

from .kafka import Kafka
from .proc import StackError


def wanted(settings) -> dict[str, dict[str, object]]:
    """Topic name -> create options (partitions, replication, configs): the CLI's table
    (:func:`pipeline.console.topics.wanted`) in the admin client's words."""
    return {name: {"num_partitions": spec["partitions"],
                   "replication_factor": settings.topic_replication,
                   "configs": spec["configs"]}
            for name, spec in topic_specs(settings).items()}


def ensure_topics(settings) -> list[str]:
    """Create the missing topics; return one note per topic whose state is worth telling."""
    broker = Kafka(settings)
    try:
        admin = broker.admin(timeout_ms=10000)
    except KafkaError:
        raise StackError("topics", f"Kafka at {broker.host}:{broker.port} does not answer; "
                         "run `ops/stack.py up`") from None
    notes = []
    try:
        ours = [name for name in admin.list_topics() if name in wanted(settings)]
        existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(ours)} if ours else {}
        missing = {name: opts for name, opts in wanted(settings).items() if name not in existing}
        for name, opts in wanted(settings).items():
            count = existing.get(name)
            if count is not None and count != opts["num_partitions"]:
                notes.append(f"{name} has {count} partitions, settings say "
                             f"{opts['num_partitions']}; left as is")
        if missing:
            try:
                admin.create_topics(missing, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass  # made by someone else in the meantime
            notes.extend(f"{name} created" for name in missing)
    except KafkaError as exc:
        raise StackError("topics", f"cannot create topics: {exc}") from None
    finally:
        admin.close()
    return notes
