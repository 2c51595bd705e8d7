"""The fleet verbs: ``dlq list`` / ``dlq replay`` and ``top``.

Each reads the settings from ``ctx.obj``, reaches its services through
:mod:`pipeline.console.services` (one line and exit 4 when one is down) and prints tables
on a terminal, plain text elsewhere, JSON with ``--json``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click
from sqlalchemy import Engine

from pipeline.console.clickbase import Command, Group, json_option
from pipeline.console.output import clock, console, emit_json, table
from pipeline.console.services import reaching_kafka
from pipeline.console.verbs import database, reading
from pipeline.settings import Settings


# --- dlq ------------------------------------------------------------------------------------
@click.group(cls=Group)
def dlq() -> None:
    """The dead-letter topic: rejected messages, and replaying them after a fix."""


def _dead_letters(settings: Settings, code: str | None,
                  task_id: str | None) -> list[dict[str, Any]]:
    from pipeline.console import dlq as letters, kafka

    with reaching_kafka(settings):
        return letters.select(kafka.read_all(settings, settings.topic_dlq), code, task_id)


@dlq.command(name="list")
@click.option("--code", help="an error code, or a family: message. / input.*")
@click.option("--task-id")
@click.option("--limit", type=click.IntRange(1, 1000000), default=100, show_default=True,
              help="the most recent N")
@json_option
@click.pass_obj
def dlq_list(settings: Settings, code: str | None, task_id: str | None, limit: int,
             as_json: bool) -> int:
    """Dead letters, oldest first: where they came from, their code and message."""
    from pipeline.console.dlq import public

    found = sorted(_dead_letters(settings, code, task_id),
                   key=lambda e: (e["timestamp_ms"], e["partition"], e["offset"]))[-limit:]
    if as_json:
        emit_json([public(e) for e in found])
        return 0
    out = table("dlq", "when", "from", "task", "code", "message",
                title=f"{settings.topic_dlq}: {len(found)} dead letter(s)")
    for e in found:
        when = datetime.fromtimestamp(e["timestamp_ms"] / 1000, timezone.utc)
        origin = e["original"]
        out.add_row(f"{e['partition']}:{e['offset']}", clock(when),
                    f"{origin['topic']}:{origin['partition']}:{origin['offset']}",
                    e["task_id"] or "-", e["code"] or "-", (e["message"] or "")[:80])
    console().print(out)
    return 0


@dlq.command(name="replay")
@click.option("--code", help="only these: an error code, or a family (message.)")
@click.option("--task-id", help="only this task's dead letters")
@click.option("--dry-run", is_flag=True, help="say what would be sent, send nothing")
@click.option("--new-id", is_flag=True,
              help="send a message whose task id already has a row as a new task linked "
                   "to it (otherwise it is a duplicate and is skipped)")
@click.option("--to", "to_topic", help="send to this topic (default: the original topic)")
@json_option
@click.pass_obj
def dlq_replay(settings: Settings, code: str | None, task_id: str | None, dry_run: bool,
               new_id: bool, to_topic: str | None, as_json: bool) -> int:
    """Re-publish dead letters (original key, value and headers) to their task topic."""
    from sqlalchemy import text

    from pipeline.console import dlq as letters, kafka
    from pipeline.console.retry import next_id

    items = _dead_letters(settings, code, task_id)
    with reading(settings) as conn:
        def known(ids: list[str]) -> dict[str, str]:
            rows = conn.execute(text("SELECT task_id, status FROM tasks WHERE task_id = "
                                     "ANY(:ids)"), {"ids": ids})
            return {r.task_id: r.status for r in rows}

        taken: set[str] = set()

        def fresh(old: str) -> str:
            candidate = next_id(conn, old)
            while candidate in taken:  # two dead letters of one task in this replay
                candidate = f"{candidate}x"
            taken.add(candidate)
            return candidate

        steps = letters.plan(items, known, fresh if new_id else None, settings.topic_tasks,
                             to_topic)
    sends = [s for s in steps if s["action"] == "send"]
    if sends and not dry_run:
        with reaching_kafka(settings):
            by_topic: dict[str, list[dict[str, Any]]] = {}
            for step in sends:
                by_topic.setdefault(step["topic"], []).append(step)
            for topic, group in by_topic.items():
                for step, meta in zip(group, kafka.send(settings, topic,
                                                        [s["record"] for s in group])):
                    step["sent"] = {"partition": meta.partition, "offset": meta.offset}
    report = [{k: v for k, v in s.items() if k != "record"} for s in steps]
    for step in report:
        if step["action"] == "send":
            step["action"] = "would send" if dry_run else "sent"
    if as_json:
        emit_json({"dry_run": dry_run, "steps": report})
        return 0
    verb = "would send" if dry_run else "sent"
    out = table("dlq", "task", "code", "action", title=(
        f"{len(sends)} {verb}, {len(steps) - len(sends)} skipped"
        + (" (dry run: nothing sent)" if dry_run else "")))
    for step in report:
        action = step["action"]
        if step.get("new_task_id"):
            action += f" as {step['new_task_id']}"
        if step["action"] != "skip":
            action += f" to {step['topic']}"
        else:
            action += f": {step['reason']}"
        out.add_row(step["dlq"], step["task_id"] or "-", step["code"] or "-", action)
    console().print(out)
    return 0


# --- top ------------------------------------------------------------------------------------
@click.command(cls=Command)
@click.option("--once", is_flag=True, help="print one frame and exit")
@click.option("--interval", type=click.FloatRange(0.2), default=2.0, show_default=True,
              help="seconds between frames")
@json_option
@click.pass_obj
def top(settings: Settings, once: bool, interval: float, as_json: bool) -> int:
    """A live view of the fleet: backlog by status and tenant, in flight per pool, gpu
    busy, consumer lag, oldest job. --json prints one frame."""
    import time

    import redis

    from pipeline.console import fleet, kafka
    from pipeline.console.services import reaching_redis, require_kafka

    client = redis.Redis(host=settings.redis_host, port=settings.redis_port,
                         db=settings.redis_db, socket_timeout=5, socket_connect_timeout=3,
                         password=(settings.redis_password.get_secret_value()
                                   if settings.redis_password else None))
    require_kafka(settings)

    def snapshot(engine: Engine) -> dict[str, Any]:
        with engine.connect() as conn:
            db_part = fleet.database_part(conn, settings.topic_tasks)
        with reaching_redis(settings):
            depths = fleet.queue_depths(client)
        with reaching_kafka(settings):
            lag = kafka.group_lag(settings, settings.topic_tasks, settings.consumer_group)
        return fleet.frame(settings, db_part, depths, lag)

    with database(settings) as engine:
        if as_json:
            emit_json(snapshot(engine))
            return 0
        out = console()
        if once or not out.is_terminal:
            out.print(fleet.render(snapshot(engine)))
            return 0
        from rich.live import Live

        with Live(fleet.render(snapshot(engine)), console=out, auto_refresh=False,
                  screen=False) as live:
            try:
                while True:
                    time.sleep(interval)
                    live.update(fleet.render(snapshot(engine)), refresh=True)
            except KeyboardInterrupt:
                return 0
    return 0


#: Every verb of this module, for :mod:`pipeline.cli`.
VERBS = (dlq, top)
