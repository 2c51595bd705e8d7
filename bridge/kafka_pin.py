"""The one kafka-python release the bridge runs on, and every private name it uses.

Nothing public does these jobs, so the bridge reads kafka-python internals:

    bridge/consumer.py   KafkaConsumer._coordinator: its ``_join_task`` and ``need_rejoin``
                         (finishing a JoinGroup/SyncGroup round left between two polls)
    bridge/rawfetch.py   KafkaConsumer._manager (``send``, ``wait_for``,
                         ``cluster.leader_for_partition``), KafkaConsumer._net.run and the
                         ``kafka.protocol.consumer.FetchRequest`` schema (raw record bytes)

They were read against :data:`PINNED` (also pinned in setup.cfg). :func:`check_client` runs
first at the bridge's start and refuses any other version (exit 3), so an upgrade
re-checks both modules before the pin moves.
"""

from __future__ import annotations

import kafka

from pipeline.errors import ConfigError

#: The kafka-python release whose internals the bridge uses.
PINNED = "3.0.12"


def check_client(version: str | None = None) -> None:
    """Raise :class:`ConfigError` unless kafka-python (or ``version``) is :data:`PINNED`."""
    version = kafka.__version__ if version is None else version
    if version != PINNED:
        raise ConfigError(
            f"kafka-python {version} is installed, but the bridge uses kafka-python "
            f"{PINNED}'s internals (bridge/consumer.py, bridge/rawfetch.py; see "
            f"bridge/kafka_pin.py): install kafka-python=={PINNED}, or re-check those "
            f"modules against {version} and move the pin")


def missing(obj: object, names: tuple[str, ...], where: str) -> None:
    """Raise :class:`ConfigError` when ``obj`` lacks any of ``names`` (used by ``where``)."""
    absent = [name for name in names if not hasattr(obj, name)]
    if absent:
        raise ConfigError(f"kafka-python {kafka.__version__}: {type(obj).__name__} lacks "
                          f"{', '.join(absent)}, which {where} uses: re-check it")
