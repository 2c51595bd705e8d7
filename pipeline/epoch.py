"""The Celery broker's epoch, for the reconciler: did Redis restart since we last looked?

Redis gives every server start a new ``run_id`` (``INFO server``). The reconciler keeps the
``run_id`` it last handled in PostgreSQL (``broker_epochs``, one row per topic), which
outlives anything in Redis. A different ``run_id`` means messages published before may be
gone: every job with no live lease is sent again at once (a copy that was not lost is
harmless, the stage lease lets one run). The first ``run_id`` ever seen for a topic is only
recorded. With the append-only file (``appendonly yes``, ``appendfsync everysec``, as the
local stack and the manifests run it) little is lost in a restart, but the last second of
publishes may be: the re-send covers it. Data lost without a restart (a ``FLUSHDB``) is not
an epoch: the reconciler's stall rule (``SONIC_STALLED_AFTER_S``) covers it.
"""

from __future__ import annotations

import redis
from sqlalchemy import Engine, text

_SEEN = text("SELECT run_id FROM broker_epochs WHERE topic = :topic")
_FIRST = text("INSERT INTO broker_epochs (topic, run_id) VALUES (:topic, :run_id) "
              "ON CONFLICT (topic) DO NOTHING")
_CONFIRM = text("""
INSERT INTO broker_epochs (topic, run_id) VALUES (:topic, :run_id)
ON CONFLICT (topic) DO UPDATE SET run_id = excluded.run_id, seen_at = now()""")


class RedisEpoch:
    """:class:`pipeline.reconcile.Broker` for a Redis broker, remembered in PostgreSQL."""

    def __init__(self, client: redis.Redis, db_engine: Engine, topic: str) -> None:
        self.client, self.db_engine, self.topic = client, db_engine, topic

    def run_id(self) -> str:
        """The Redis server's current ``run_id``; raises ``redis.RedisError``."""
        return str(self.client.info("server")["run_id"])

    def restarted(self) -> str | None:
        """The server's ``run_id`` when it differs from the one handled last, else None
        (also the first time a topic sees a server: that one is recorded).

        Raises ``redis.RedisError`` or the database driver's errors."""
        run_id = self.run_id()
        with self.db_engine.begin() as conn:
            seen = conn.execute(_SEEN, {"topic": self.topic}).scalar()
            if seen is None:
                conn.execute(_FIRST, {"topic": self.topic, "run_id": run_id})
                return None
        return None if seen == run_id else run_id

    def confirm(self, token: str) -> None:
        """Remember ``token`` (a ``run_id``) as handled."""
        with self.db_engine.begin() as conn:
            conn.execute(_CONFIRM, {"topic": self.topic, "run_id": token})
