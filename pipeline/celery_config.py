"""Celery's configuration, derived from :class:`~pipeline.settings.Settings`.

One queue per stage, routed by task name; JSON only; late acks with prefetch 1 so a
killed worker's task is redelivered and priorities are honoured; a Redis visibility
timeout longer than any gpu task (a shorter one redelivers a running task: celery#5935).
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from pipeline.settings import STAGES, Settings

#: Celery task name of each stage (keyed by stage, which is also its queue); the chain is
#: built from these names only, so the bridge never imports the task modules.
TASK_NAMES: dict[str, str] = {
    "preprocess": "sonic.preprocess",
    "gpu": "sonic.inference",
    "encode": "sonic.encode",
    "upload": "sonic.upload",
    "callback": "sonic.callback",
}
assert tuple(TASK_NAMES) == STAGES

#: Queue for maintenance tasks (health pings, reconciler sweeps).
DEFAULT_QUEUE = "default"

#: Worker pools: the queues each consumes (``sonic-pipeline worker --pool NAME``).
POOLS: dict[str, tuple[str, ...]] = {
    "gpu": ("gpu",),
    "cpu": ("preprocess", "encode"),
    "io": ("upload", "callback", DEFAULT_QUEUE),
}

#: Task modules every worker imports. They stay thin and never import torch at the top.
TASK_MODULES: tuple[str, ...] = ("tasks.health", "tasks.preprocess", "tasks.inference",
                                 "tasks.encode", "tasks.upload", "tasks.callback")


def queues() -> list[Queue]:
    names = (*STAGES, DEFAULT_QUEUE)
    return [
        Queue(name, Exchange(name, type="direct"), routing_key=name,
              queue_arguments={"x-max-priority": 9})
        for name in names
    ]


def routes() -> dict[str, dict[str, str]]:
    return {task: {"queue": stage, "routing_key": stage} for stage, task in TASK_NAMES.items()}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu's Redis socket_timeout defaults to None: a stalled Redis would hang the
            # bridge's poll thread past max_poll_interval_ms.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "queue_order_strategy": "priority",
            "priority_steps": list(range(10)),
            "sep": ":",
        },
        # Results live in Postgres; the Redis backend only carries short-lived replies of
        # maintenance tasks that ask for one.
        "result_backend": settings.broker_url,
        "result_expires": 3600,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_queues": queues(),
        "task_default_queue": DEFAULT_QUEUE,
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_routing_key": DEFAULT_QUEUE,
        "task_routes": routes(),
        "task_default_priority": 5,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_track_started": True,
        "task_time_limit": settings.time_limit_s + 30,
        "task_soft_time_limit": settings.time_limit_s,
        "task_annotations": {
            TASK_NAMES["gpu"]: {
                "time_limit": settings.gpu_time_limit_s + 60,
                "soft_time_limit": settings.gpu_time_limit_s,
            }
        },
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        # A Redis blink must not kill an hour of rendering: the running task goes on, its
        # lease in PostgreSQL keeps any redelivered copy from starting beside it, and what
        # it publishes next is retried (or left to the reconciler).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "imports": TASK_MODULES,
        "timezone": "UTC",
        "enable_utc": True,
    }
