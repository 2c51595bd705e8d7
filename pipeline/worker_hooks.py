"""Worker lifecycle hooks, connected when the Celery app is imported (``celeryd_init``
fires before the task modules load, so they could not connect it themselves).

- remember which queues this worker consumes (the gpu task warms its engine only there);
- serve the pool's metrics from the parent process (see :mod:`pipeline.metrics`).
"""

from __future__ import annotations

from typing import Any

from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown

from pipeline import metrics
from pipeline.celery_config import POOLS
from pipeline.settings import Settings

#: The queues this worker consumes (empty outside a worker).
QUEUES: set[str] = set()


def consumes(queue: str) -> bool:
    return queue in QUEUES


def metrics_port(settings: Settings, queues: set[str]) -> int | None:
    """The pool's port: ``SONIC_METRICS_PORT`` + 1 + its index; None for other queue sets."""
    for index, pool_queues in enumerate(POOLS.values()):
        if queues == set(pool_queues):
            return settings.metrics_port + 1 + index
    return None


def pool_of(queues: set[str]) -> str | None:
    """The pool whose queues these are (None for another set)."""
    return next((pool for pool, pool_queues in POOLS.items() if queues == set(pool_queues)),
                None)


def connect(settings: Settings) -> None:
    @celeryd_init.connect(weak=False)
    def _worker_init(sender: str | None = None, options: dict[str, Any] | None = None,
                     **_: Any) -> None:
        queues = (options or {}).get("queues") or []
        if isinstance(queues, str):
            queues = queues.split(",")
        QUEUES.update(q.strip() for q in queues)
        port = metrics_port(settings, QUEUES)
        if port is not None:
            directory = settings.state_dir / "metrics" / f"{sender or 'worker'}-{port}"
            metrics.serve_worker_metrics(directory, port, settings.host)

    @worker_process_init.connect(weak=False)
    def _child_started(**_: Any) -> None:
        pool = pool_of(QUEUES)
        if pool is not None:
            metrics.worker_started(pool, POOLS[pool], settings.default_engine)

    @worker_process_shutdown.connect(weak=False)
    def _child_exited(pid: int | None = None, **_: Any) -> None:
        if pid is not None:
            metrics.process_exited(pid)
