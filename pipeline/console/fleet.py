"""``sonic-pipeline top``: one frame of the fleet, from PostgreSQL, Redis and Kafka.

    backlog       jobs not final, by tenant and status (received, waiting, queued, running)
    pools         per worker pool: jobs queued and running at its stages (PostgreSQL) and
                  messages waiting in its Celery queues (Redis)
    gpu           gpu stages holding a live lease / SONIC_GPU_SLOTS
    lag           the bridge group's consumer lag on the task topic (sum, worst partition)
    oldest        age of the oldest job not final, and of the oldest runnable one
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection, text

from pipeline.celery_config import POOLS
from pipeline.chains import queue_keys
from pipeline.console.output import seconds, styled_status, table
from pipeline.settings import Settings

OPEN = ("received", "waiting", "queued", "running")

_BACKLOG = text("""
SELECT coalesce(tenant, '') AS tenant, status, count(*) AS n FROM tasks
WHERE kafka_topic = :topic AND status IN ('received', 'waiting', 'queued', 'running')
GROUP BY 1, 2""")

_BY_STAGE = text("""
SELECT stage, status, count(*) AS n FROM tasks
WHERE kafka_topic = :topic AND status IN ('queued', 'running') GROUP BY 1, 2""")

_GPU_BUSY = text("""
SELECT count(*) FROM tasks WHERE kafka_topic = :topic AND lease_stage = 'gpu'
  AND lease_owner IS NOT NULL AND lease_expires_at > now()""")

_OLDEST = text("""
SELECT min(received_at) AS oldest,
       min(received_at) FILTER (WHERE status = 'received') AS oldest_runnable
FROM tasks WHERE kafka_topic = :topic
  AND status IN ('received', 'waiting', 'queued', 'running')""")


def database_part(conn: Connection, topic: str) -> dict[str, Any]:
    """The PostgreSQL half of a frame (see the module docstring)."""
    backlog: dict[str, dict[str, int]] = {}
    for r in conn.execute(_BACKLOG, {"topic": topic}):
        backlog.setdefault(r.tenant or "-", dict.fromkeys(OPEN, 0))[r.status] = int(r.n)
    stages: dict[str, dict[str, int]] = {}
    for r in conn.execute(_BY_STAGE, {"topic": topic}):
        stages.setdefault(r.stage or "preprocess", {"queued": 0, "running": 0})[r.status] = int(r.n)
    oldest = conn.execute(_OLDEST, {"topic": topic}).one()
    now = datetime.now(timezone.utc)
    return {
        "backlog": dict(sorted(backlog.items())),
        "stages": stages,
        "gpu_busy": int(conn.execute(_GPU_BUSY, {"topic": topic}).scalar_one()),
        "oldest_s": (now - oldest.oldest).total_seconds() if oldest.oldest else None,
        "oldest_runnable_s": ((now - oldest.oldest_runnable).total_seconds()
                              if oldest.oldest_runnable else None),
    }


def queue_depths(client: Any) -> dict[str, int]:
    """Messages waiting in each Celery queue (every priority list of it)."""
    out = {}
    for queues in POOLS.values():
        for queue in queues:
            pipe = client.pipeline()
            for key in queue_keys([queue]):
                pipe.llen(key)
            out[queue] = int(sum(pipe.execute()))
    return out


def frame(settings: Settings, db: dict[str, Any], depths: dict[str, int],
          lag: dict[int, int]) -> dict[str, Any]:
    """A whole frame, JSON-ready: the database part, pools, gpu and lag."""
    pools = {}
    for pool, queues in POOLS.items():
        pools[pool] = {
            "queued": sum(db["stages"].get(q, {}).get("queued", 0) for q in queues),
            "running": sum(db["stages"].get(q, {}).get("running", 0) for q in queues),
            "broker_messages": sum(depths.get(q, 0) for q in queues),
            "queues": list(queues),
        }
    return {
        "topic": settings.topic_tasks,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backlog": db["backlog"],
        "totals": {s: sum(t[s] for t in db["backlog"].values()) for s in OPEN},
        "pools": pools,
        "gpu": {"busy": db["gpu_busy"], "slots": settings.gpu_slots},
        "lag": {"group": settings.consumer_group, "total": sum(lag.values()),
                "max_partition": max(lag.values()) if lag else 0},
        "oldest_s": db["oldest_s"], "oldest_runnable_s": db["oldest_runnable_s"],
    }


def render(data: dict[str, Any]) -> Group:
    """A frame as rich renderables (tables), for a terminal or a plain stream."""
    head = Text.from_markup(
        f"[bold]sonic-pipeline top[/]  topic {data['topic']}  {data['at']}\n"
        f"lag {data['lag']['total']} (worst partition {data['lag']['max_partition']}, group "
        f"{data['lag']['group']})   gpu busy {data['gpu']['busy']}/{data['gpu']['slots']}   "
        f"oldest job {seconds(data['oldest_s'])}   oldest runnable "
        f"{seconds(data['oldest_runnable_s'])}")
    backlog: Table = table("tenant", *map(styled_status, OPEN), title="backlog by tenant")
    for tenant, counts in data["backlog"].items():
        backlog.add_row(tenant, *(str(counts[s]) for s in OPEN))
    backlog.add_row("[bold]all[/]", *(f"[bold]{data['totals'][s]}[/]" for s in OPEN))
    pools: Table = table("pool", "queues", "queued", "running", "in broker",
                         title="in flight per pool")
    for pool, p in data["pools"].items():
        pools.add_row(pool, ",".join(p["queues"]), str(p["queued"]), str(p["running"]),
                      str(p["broker_messages"]))
    return Group(head, Text(""), backlog, Text(""), pools)
