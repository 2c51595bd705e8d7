"""The job verbs: submit, status, show, list, events, cancel, retry (the fleet's, dlq and
top, are :mod:`pipeline.console.verbs_fleet`).

Each reads the settings from ``ctx.obj``, reaches its services through
:mod:`pipeline.console.services` (one line and exit 4 when one is down) and prints tables
on a terminal, plain text elsewhere, JSON with ``--json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import click
from sqlalchemy import Connection, Engine

from pipeline.console import jobs
from pipeline.console.clickbase import EXIT_INTERRUPTED, PROG, Command, json_option
from pipeline.console.output import (
    clock,
    console,
    emit_json,
    seconds,
    styled_status,
    table,
)
from pipeline.console.services import reaching_kafka, reaching_postgres, reaching_store
from pipeline.errors import EXIT_USAGE, PipelineError
from pipeline.settings import Settings


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    """A small engine for one verb, its driver errors as one line (exit 3 or 4)."""
    from pipeline.state.db import make_db_engine

    engine = make_db_engine(settings, pool_size=1)
    try:
        with reaching_postgres(settings):
            yield engine
    finally:
        engine.dispose()


@contextmanager
def reading(settings: Settings) -> Iterator[Connection]:
    with database(settings) as engine, engine.connect() as conn:
        yield conn


def not_found(task_id: str) -> PipelineError:
    return PipelineError(f"no task {task_id!r} in the tasks table", code="task.not_found")


def refused_ids(task_ids: tuple[str, ...] | list[str], nothing: str = "") -> int | None:
    """Exit 2 (printed as ``task.invalid_id``) when an id cannot be a task id
    (:func:`pipeline.job_ids.is_task_id`), before anything reads or writes; else None.
    ``nothing``: what was therefore not done (``"cancelled"``, ...)."""
    from pipeline.job_ids import is_task_id, not_a_task_id

    bad = [t for t in task_ids if not is_task_id(t)]
    if not bad:
        return None
    click.echo(f"{PROG}: task.invalid_id: {not_a_task_id(bad[0])}"
               + (f"; nothing was {nothing}" if nothing else ""), err=True)
    return EXIT_USAGE


# --- submit ---------------------------------------------------------------------------------
@click.command(cls=Command)
@click.option("--image", required=True, help="portrait: a local file (uploaded) or a URL")
@click.option("--audio", required=True, help="speech: a local file (uploaded) or a URL")
@click.option("--callback-url")
@click.option("--task-id", help="default: a random hex id")
@click.option("--engine")
@click.option("--tenant")
@click.option("--priority", type=click.IntRange(0, 9), help="0 highest ... 9 (default 5)")
@click.option("--ordering-key", help="the Kafka key (default: the task id)")
@click.option("--min-resolution", type=int, default=512, show_default=True)
@click.option("--inference-steps", type=int, default=25, show_default=True)
@click.option("--dynamic-scale", type=float)
@click.option("--motion-scale", type=float)
@click.option("--seed", type=int)
@click.option("--wait", is_flag=True, help="follow the job with a progress bar until final")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), metavar="S",
              help="with --wait: stop waiting after S seconds")
@json_option
@click.pass_obj
def submit(settings: Settings, image: str, audio: str, callback_url: str | None,
           task_id: str | None, engine: str | None, tenant: str | None,
           priority: int | None, ordering_key: str | None, min_resolution: int,
           inference_steps: int, dynamic_scale: float | None, motion_scale: float | None,
           seed: int | None, wait: bool, timeout: float | None, as_json: bool) -> int:
    """Publish one job to the task topic (local files are uploaded to the object store
    first). The message passes the bridge's own check before anything is uploaded or
    sent (a malformed id: task.invalid_id, exit 2; a bad field: its message.* code,
    exit 1). Prints {"task_id", "topic", "partition", "offset", "image_url",
    "audio_url"}; with --wait, the result URL or the error once the job is final (exit 0
    completed, 1 otherwise)."""
    from pipeline.console import kafka, submit as submitting

    if timeout is not None and not wait:
        raise click.UsageError("--timeout applies to --wait only: add --wait, or drop it")
    if task_id is not None and refused_ids([task_id], "uploaded or sent"):
        return EXIT_USAGE
    task_id = task_id or submitting.new_task_id()
    knobs = {"min_resolution": min_resolution, "inference_steps": inference_steps,
             "dynamic_scale": dynamic_scale, "motion_scale": motion_scale, "seed": seed}
    extra = {"tenant": tenant, "priority": priority, "ordering_key": ordering_key}
    submitting.check_at_the_door(submitting.message(
        task_id, image, audio, callback_url=callback_url, engine=engine, config=knobs,
        extra=extra), settings)
    with reaching_store(settings):
        image_url = submitting.upload(settings, task_id, "image", image)
        audio_url = submitting.upload(settings, task_id, "audio", audio)
    for role, ref, given in (("image", image_url, image), ("audio", audio_url, audio)):
        why = submitting.reachable_by_workers(settings, ref) if ref != given else None
        if why:
            click.echo(f"{PROG}: warning: the uploaded {role} {ref} is not readable with "
                       f"these settings: {why}", err=True)
    message = submitting.message(task_id, image_url, audio_url, callback_url=callback_url,
                                 engine=engine, config=knobs, extra=extra)
    with reaching_kafka(settings):
        meta, = kafka.send(settings, settings.topic_tasks, [
            {"key": (ordering_key or task_id).encode(), "value": submitting.encode(message)}])
    sent = {"task_id": task_id, "topic": settings.topic_tasks, "partition": meta.partition,
            "offset": meta.offset, "image_url": image_url, "audio_url": audio_url}
    if not wait:
        print(json.dumps(sent))
        return 0
    try:  # from here on the job is in Kafka: Ctrl-C stops the waiting, not the job
        click.echo(f"submitted {task_id} to {settings.topic_tasks} (partition "
                   f"{meta.partition}, offset {meta.offset})", err=True)
        return _wait(settings, task_id, timeout, as_json)
    except KeyboardInterrupt:
        click.echo(f"\n{task_id} keeps running; follow it with `{PROG} status {task_id}` "
                   f"(or `{PROG} events {task_id}`)", err=True)
        return EXIT_INTERRUPTED


def _wait(settings: Settings, task_id: str, timeout: float | None, as_json: bool) -> int:
    from pipeline.console import follow, status

    with database(settings) as engine:
        final = follow.follow(engine, task_id, timeout_s=timeout)
        with engine.connect() as conn:
            info = status.describe(conn, task_id)
    if as_json:
        emit_json(info)
    elif final is None:
        click.echo(f"{task_id}: still {info['status']} after {timeout}s; follow it with "
                   f"`{PROG} status {task_id}`")
    elif final == "completed":
        click.echo(f"completed {task_id}: {info['result_url']}")
    else:
        error = info.get("error") or {}
        click.echo(f"{final} {task_id}: {error.get('code', '-')}: {error.get('message', '')}")
    return 0 if final == "completed" else 1


# --- status, show, events ----------------------------------------------------------------------
@click.command(cls=Command)
@click.argument("task_id")
@json_option
@click.pass_obj
def status(settings: Settings, task_id: str, as_json: bool) -> int:
    """Where a job is: unknown, waiting (on what), queued (position), running (stage,
    percent, worker) or final (error or result, seconds per stage). Exit 1 when unknown,
    2 for a malformed id (task.invalid_id)."""
    from pipeline.console import status as describing

    if refused_ids([task_id]):
        return EXIT_USAGE

    with reading(settings) as conn:
        info = describing.describe(conn, task_id)
    if as_json:
        emit_json(info)
    else:
        describing.render(info)
    return 1 if info["status"] == "unknown" else 0


@click.command(cls=Command)
@click.argument("task_id")
@click.pass_obj
def show(settings: Settings, task_id: str) -> int:
    """A task's row and its events, as JSON."""
    from pipeline.state.queries import task_with_events

    if refused_ids([task_id]):
        return EXIT_USAGE

    with reaching_postgres(settings):
        found = task_with_events(settings, task_id)
    if found is None:
        raise not_found(task_id)
    print(json.dumps(found, indent=2, default=str))
    return 0


@click.command(cls=Command)
@click.argument("task_id")
@json_option
@click.pass_obj
def events(settings: Settings, task_id: str, as_json: bool) -> int:
    """A job's timeline: every event, with the time since the first."""
    if refused_ids([task_id]):
        return EXIT_USAGE
    with reading(settings) as conn:
        if jobs.task(conn, task_id) is None:
            raise not_found(task_id)
        found = jobs.events(conn, task_id)
    if as_json:
        emit_json(found)
        return 0
    out = table("at", "+s", "stage", "event", "worker", "try", "took", "detail",
                title=f"{task_id}: {len(found)} events")
    first = found[0]["at"] if found else None
    for e in found:
        detail = json.dumps(e["detail"], default=str) if e["detail"] else ""
        out.add_row(clock(e["at"]), f"{(e['at'] - first).total_seconds():.2f}",
                    e["stage"] or "-", e["event"], e["worker"] or "-", str(e["attempt"]),
                    seconds(e["duration_s"]) if e["duration_s"] is not None else "",
                    detail if len(detail) <= 100 else detail[:97] + "...")
    console().print(out)
    return 0


# --- list -----------------------------------------------------------------------------------
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str | None) -> datetime | None:
    """``30m``, ``2h``, ``1d`` (ago) or an ISO time (UTC when it names no zone)."""
    if value is None:
        return None
    found = _SINCE.match(value.strip())
    if found:
        ago = float(found.group(1)) * _UNITS[found.group(2)]
        return datetime.now(timezone.utc) - timedelta(seconds=ago)
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a duration (30m, 2h, 1d) nor an ISO "
                                 "time", param_hint="--since") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


@click.command(name="list", cls=Command)
@click.option("--status", "statuses", multiple=True, metavar="STATUS",
              help="repeat or comma-separate: received,waiting,queued,running,completed,...")
@click.option("--tenant")
@click.option("--code", help="an error code, or a family: image. / message.*")
@click.option("--since", help="received since: 30m, 2h, 1d or an ISO time")
@click.option("--topic", help="jobs of this task topic only")
@click.option("--limit", type=click.IntRange(1, 100000), default=50, show_default=True)
@json_option
@click.pass_obj
def list_jobs(settings: Settings, statuses: tuple[str, ...], tenant: str | None,
              code: str | None, since: str | None, topic: str | None, limit: int,
              as_json: bool) -> int:
    """Jobs, newest first, filtered by status, tenant, error code and age."""
    from pipeline.state.status import Status

    wanted = tuple(s.strip() for item in statuses for s in item.split(",") if s.strip())
    unknown = sorted(set(wanted) - {s.value for s in Status})
    if unknown:
        raise click.BadParameter(f"unknown status {', '.join(unknown)}",
                                 param_hint="--status")
    with reading(settings) as conn:
        found = jobs.list_tasks(conn, statuses=wanted, tenant=tenant, code=code,
                                since=parse_since(since), topic=topic, limit=limit)
    if as_json:
        emit_json(found)
        return 0
    out = table("task", "status", "stage", "%", "tenant", "prio", "error", "received",
                "took", "result", title=f"{len(found)} job(s)")
    for r in found:
        took = ((r["finished_at"] - r["received_at"]).total_seconds()
                if r["finished_at"] and r["received_at"] else None)
        out.add_row(r["task_id"], styled_status(r["status"]), r["stage"] or "-",
                    f"{r['progress']:.0f}", r["tenant"] or "-", str(r["priority"]),
                    r["error_code"] or "", clock(r["received_at"]), seconds(took),
                    _short(r["result_url"]))
    console().print(out)
    return 0


def _short(url: str | None, keep: int = 60) -> str:
    if not url:
        return ""
    return url if len(url) <= keep else url.split("?", 1)[0][:keep] + "..."


# --- cancel, retry ------------------------------------------------------------------------------
@click.command(cls=Command)
@click.argument("task_ids", nargs=-1, required=True, metavar="TASK_ID...")
@click.option("--reason", default="cancelled by request", show_default=True,
              help="recorded with the job (cut to 500 characters, as from the control topic)")
@click.pass_obj
def cancel(settings: Settings, task_ids: tuple[str, ...], reason: str) -> int:
    """Cancel jobs in any state, as the control topic does (final ones are left as they
    are; an id not admitted yet is cancelled ahead: its message, when it comes, never
    runs); prints {task_id: outcome} as JSON. Exit 2 for a malformed id (nothing is
    cancelled)."""
    from pipeline.scheduler.cancel import REASON_MAX, cancel_ahead

    if refused_ids(task_ids, "cancelled"):
        return EXIT_USAGE
    if len(reason) > REASON_MAX:
        click.echo(f"{PROG}: the reason is cut to its first {REASON_MAX} characters "
                   f"(it has {len(reason)})", err=True)
    with database(settings) as engine:
        outcomes = cancel_ahead(engine, settings.topic_tasks, task_ids, reason)
    print(json.dumps(outcomes, indent=2))
    return 0


@click.command(cls=Command)
@click.argument("task_id")
@click.option("--force", is_flag=True, help="retry a completed job too")
@json_option
@click.pass_obj
def retry(settings: Settings, task_id: str, force: bool, as_json: bool) -> int:
    """Run a finished job again as a new task <id>.retry<n>, linked to the old one
    (retry_of in the message and its metadata)."""
    from pipeline.console import kafka, retry as retrying, submit as submitting

    if refused_ids([task_id]):
        return EXIT_USAGE

    with reading(settings) as conn:
        row = jobs.task(conn, task_id)
        key, message = retrying.retry_message(conn, row, task_id, force=force)
    topic = (row or {}).get("kafka_topic") or settings.topic_tasks
    with reaching_kafka(settings):
        meta, = kafka.send(settings, topic, [{"key": key.encode() if key else None,
                                              "value": submitting.encode(message)}])
    sent = {"task_id": message["task_id"], "retry_of": task_id, "topic": topic,
            "partition": meta.partition, "offset": meta.offset}
    if as_json:
        emit_json(sent)
    else:
        click.echo(f"retrying {task_id} as {sent['task_id']} ({topic}, partition "
                   f"{meta.partition}, offset {meta.offset}); follow it with "
                   f"`{PROG} status {sent['task_id']}`")
    return 0


#: Every verb of this module, for :mod:`pipeline.cli`.
VERBS = (submit, status, show, list_jobs, events, cancel, retry)
