"""Step 3: publish the new jobs' chains to Redis, then mark them queued in Postgres.

The chains and a marker per task id go to Redis in one MULTI/EXEC; the marker is
removed once Postgres says ``queued``. A bridge killed in between leaves tasks
``received`` with a marker: the reconciler then only marks them, it does not publish a
second chain.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from bridge.db import Postgres
from pipeline.chains import ChainPublisher
from pipeline.state import admission


def marker_key(topic: str) -> str:
    """The Redis hash of task ids whose chain is pushed but not yet marked queued."""
    return f"sonic:dispatching:{topic}"


class RedisMarkers:
    """The reconciler's view of the dispatch markers (a Redis hash per topic)."""

    def __init__(self, client: redis.Redis, topic: str) -> None:
        self.client = client
        self.key = marker_key(topic)

    def pushed(self, task_ids: list[str]) -> set[str]:
        found = self.client.hmget(self.key, task_ids)
        return {t for t, v in zip(task_ids, found) if v is not None}

    def some(self, limit: int) -> list[str]:
        _, found = self.client.hscan(self.key, 0, count=limit)
        return [k.decode() for k in list(found)[:limit]]

    def forget(self, task_ids: list[str]) -> None:
        if task_ids:
            self.client.hdel(self.key, *task_ids)


class Dispatch:
    def __init__(self, publisher: ChainPublisher, client: redis.Redis, db: Postgres,
                 topic: str) -> None:
        self.publisher = publisher
        self.client = client
        self.db = db
        self.marker = marker_key(topic)

    def __call__(self, jobs: Sequence[tuple[str, int]]) -> None:
        if not jobs:
            return
        self.publisher.publish(jobs, marker=self.marker)
        ids = [task_id for task_id, _ in jobs]
        with self.db.transaction() as cur:
            admission.mark_queued(cur, ids)
        self.client.hdel(self.marker, *ids)
