"""The Celery broker's epoch, for the reconciler: did Redis restart since we last looked?

Redis gives every server start a new ``run_id`` (``INFO server``). The reconciler keeps the
``run_id`` it last handled in Redis itself, per topic. A different ``run_id``, or no key at
all (a Redis that lost its data, or the first sweep ever), means messages published before
may be gone: every job with no live lease is sent again at once (a copy that was not lost
is harmless, the stage lease lets one run). With the append-only file (``appendonly yes``,
``appendfsync everysec``, as the local stack and the manifests run it) little is lost, but
the last second of publishes may be: the re-send covers it.
"""

from __future__ import annotations

import redis


class RedisEpoch:
    """:class:`pipeline.reconcile.Broker` over a Redis client (the Celery broker's)."""

    def __init__(self, client: redis.Redis, topic: str) -> None:
        self.client = client
        self.key = f"sonic:broker-epoch:{topic}"

    def restarted(self) -> str | None:
        """The server's ``run_id`` when it differs from the one confirmed last, else None.

        Raises ``redis.RedisError`` when Redis cannot be reached."""
        run_id = str(self.client.info("server")["run_id"])
        seen = self.client.get(self.key)
        if seen is not None and seen.decode() == run_id:
            return None
        return run_id

    def confirm(self, token: str) -> None:
        """Remember ``token`` (a ``run_id``) as handled."""
        self.client.set(self.key, token)
