"""``sonic-pipeline status ID``: where a job is and why, in one answer.

    unknown    no row: never admitted (or not yet: the bridge may be behind; see ``top``)
    waiting    held for its ordering key's previous job and/or ``depends_on`` ids (named)
    received   runnable in the backlog: its position in the tenant's dispatch order
    queued     in Celery for a stage: its position among the jobs queued for that stage
    running    the stage, percent, the worker holding the lease, its last heartbeat
    final      completed / failed / rejected / cancelled / expired, with the error, the
               result URL and the seconds each stage took
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection

from pipeline.console import jobs
from pipeline.console.output import age, clock, console, seconds, styled_status
from pipeline.state.status import Status


def describe(conn: Connection, task_id: str) -> dict[str, Any]:
    """The status of ``task_id`` as a JSON-ready dict (``status`` is ``unknown`` when there
    is no row); ``summary`` is the one-line answer."""
    row = jobs.task(conn, task_id)
    if row is None:
        return {"task_id": task_id, "status": "unknown",
                "summary": "unknown: no such task was admitted (if it was just sent, the "
                           "bridge may not have read it yet: `sonic-pipeline top` shows "
                           "the consumer lag)"}
    now = datetime.now(timezone.utc)
    out: dict[str, Any] = {
        "task_id": task_id, "status": row["status"], "stage": row["stage"],
        "progress": round(float(row["progress"] or 0), 1), "tenant": row["tenant"],
        "priority": row["priority"], "engine": row["engine"],
        "received_at": row["received_at"], "queued_at": row["queued_at"],
        "started_at": row["started_at"], "finished_at": row["finished_at"],
        "attempts": row["attempts"],
    }
    status = row["status"]
    if status == Status.WAITING.value:
        waits = jobs.waiting_on(conn, row)
        out["waiting_on"] = waits
        parts = [f"{dep} ({state or 'not admitted'})"
                 for dep, state in waits["dependencies"].items()]
        if waits["previous"]:
            prev = waits["previous"]
            parts.insert(0, f"{prev['task_id']} ({prev['status']}), the job before it with "
                            f"ordering key {prev['ordering_key']!r}")
        out["summary"] = "waiting for " + ("; ".join(parts) if parts else "its release")
    elif status == Status.RECEIVED.value:
        place = jobs.backlog_position(conn, row)
        out["backlog"] = place
        tenant = f"tenant {row['tenant']}'s" if row["tenant"] else "the default tenant's"
        out["summary"] = (f"queued in the backlog (not dispatched yet): position "
                          f"{place['position']} in {tenant} order, {place['runnable']} "
                          "runnable in the topic")
    elif status == Status.QUEUED.value:
        position = jobs.queue_position(conn, row)
        out["queue"] = {"stage": row["stage"], "position": position}
        out["summary"] = (f"queued for stage {row['stage']}: position {position} among the "
                          "jobs queued for it")
    elif status == Status.RUNNING.value:
        live = row["lease_owner"] is not None
        out["running"] = {"stage": row["lease_stage"] or row["stage"],
                          "worker": row["lease_owner"],
                          "heartbeat_age_s": age(row["heartbeat_at"], now),
                          "elapsed_s": age(row["started_at"], now)}
        if live:
            out["summary"] = (f"running {out['running']['stage']} at {out['progress']:.0f}% "
                              f"on {row['lease_owner']}")
        else:
            out["summary"] = (f"running, between stages at {out['progress']:.0f}%: "
                              f"{out['running']['stage']} is next, waiting for a worker of "
                              "its pool")
    else:
        out["summary"] = status
        if row["error_code"]:
            out["summary"] += f": {row['error_code']}: {row['error_message']}"
        elif row["result_url"]:
            out["summary"] += f": {row['result_url']}"
    if row["error_code"]:
        out["error"] = {"code": row["error_code"], "message": row["error_message"]}
    out["result_url"] = row["result_url"]
    out["callback"] = ({"url": row["callback_url"], "status": row["callback_status"],
                        "attempts": row["callback_attempts"]} if row["callback_url"] else None)
    out["timings"] = _timings(conn, row)
    payload = row["payload"] or {}
    link = payload.get("retry_of") or (payload.get("metadata") or {}).get("retry_of")
    if link:
        out["retry_of"] = link
    return out


def _timings(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    end = row["finished_at"] or datetime.now(timezone.utc)
    start = row["started_at"]
    return {
        "stages_s": jobs.stage_timings(conn, row["task_id"]),
        "wait_s": (start - row["received_at"]).total_seconds() if start else None,
        "total_s": (end - row["received_at"]).total_seconds() if row["received_at"] else None,
    }


def render(info: dict[str, Any]) -> None:
    """``info`` (from :func:`describe`) for people."""
    out = console()
    out.print(f"[bold]{info['task_id']}[/]  {styled_status(info['status'])}")
    out.print(f"  {info['summary']}", markup=False)
    if info["status"] == "unknown":
        return
    fields = [("tenant", info["tenant"] or "-"), ("priority", info["priority"]),
              ("engine", info["engine"] or "default"),
              ("received", clock(info["received_at"])), ("started", clock(info["started_at"])),
              ("finished", clock(info["finished_at"]))]
    if info.get("retry_of"):
        fields.append(("retry of", info["retry_of"]))
    if info.get("callback"):
        cb = info["callback"]
        fields.append(("callback", f"{cb['status'] or 'pending'} ({cb['attempts']} "
                                   f"attempt(s))"))
    for name, value in fields:
        out.print(f"  {name:<9} {value}", markup=False)
    timings = info["timings"]
    stages = "  ".join(f"{stage} {seconds(s)}" for stage, s in timings["stages_s"].items())
    out.print(f"  {'timings':<9} {stages or '-'}  (waited {seconds(timings['wait_s'])}, "
              f"total {seconds(timings['total_s'])})", markup=False)
