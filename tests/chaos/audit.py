"""The audit that ends every fault scenario: from PostgreSQL, the object store's listing and
the callback receiver's log, did every produced job end exactly once?

- **lost**: produced, but no row, or a row still not final (or its callback unsettled);
- **duplicated**: a job admitted more than once, moved to a final status more than once,
  or with a stage that succeeded more than once (work done twice);
- **unexpected**: final, but not in a status the scenario expects (default ``completed``:
  a job the faults pushed to ``failed`` with ``task.lost`` is a loss too; an expected
  entry is a status, or ``status:error_code`` such as ``failed:task.deadline``);
- **missing_videos** / **extra_videos**: a completed job without exactly its
  ``videos/<id>.mp4`` (and poster), or a video of a job that did not complete;
- **callbacks_bad**: a job with a callback URL whose receiver did not see exactly one
  ``webhook-id`` (retries of one id are fine), or whose delivered status is not the row's;
- **past_deadline**: a job whose first stage started after its deadline.

    result = audit(db_engine, ids, object_keys, receiver.requests)
    assert result.passed, result.problems
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Engine, text

FINAL = ("completed", "failed", "rejected", "cancelled", "expired")
SETTLED = ("delivered", "failed", "none")
#: Stages whose start counts for the deadline check (the callback stage runs for every
#: final job, expired ones included).
WORK_STAGES = ("preprocess", "gpu", "encode", "upload")

_ROWS = text("""
    SELECT task_id, status, error_code, callback_url, callback_status, deadline
    FROM tasks WHERE task_id = ANY(:ids)
""")
#: Per task: admissions and final status changes (status events), stage successes.
_OUTBOX = text(f"""
    SELECT task_id, event, count(*) FROM status_outbox
    WHERE task_id = ANY(:ids) AND event IN ('admitted', {", ".join(f"'{s}'" for s in FINAL)})
    GROUP BY task_id, event
""")
_SUCCEEDED = text("""
    SELECT task_id, stage, count(*) FROM task_events
    WHERE task_id = ANY(:ids) AND event = 'succeeded' GROUP BY task_id, stage
""")
_FIRST_START = text("""
    SELECT e.task_id, min(e.at) AS started, t.deadline FROM task_events e
    JOIN tasks t ON t.task_id = e.task_id
    WHERE e.task_id = ANY(:ids) AND e.event = 'started' AND e.stage = ANY(:stages)
      AND t.deadline IS NOT NULL
    GROUP BY e.task_id, t.deadline
""")


@dataclass
class Audit:
    """Counts over the audited jobs; ``problems``: task id -> what is wrong with it."""

    jobs: int = 0
    admitted: int = 0
    final: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    unexpected: int = 0
    missing_videos: int = 0
    extra_videos: int = 0
    callbacks_bad: int = 0
    past_deadline: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any((self.lost, self.duplicated, self.unexpected, self.missing_videos,
                        self.extra_videos, self.callbacks_bad, self.past_deadline))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        worst = dict(list(self.problems.items())[:10])
        return (f"jobs {self.jobs}, final {self.final}, lost {self.lost}, duplicated "
                f"{self.duplicated}, unexpected {self.unexpected}, videos missing "
                f"{self.missing_videos} extra {self.extra_videos}, callbacks bad "
                f"{self.callbacks_bad}, past deadline {self.past_deadline}; statuses "
                f"{self.statuses}; problems: {worst}")


def _note(problems: dict[str, list[str]], task_id: str, what: str) -> None:
    problems.setdefault(task_id, []).append(what)


def audit(db_engine: Engine, ids: Iterable[str], object_keys: Iterable[str],
          requests: Iterable[Any], *, expect: dict[str, tuple[str, ...]] | None = None,
          callbacks: bool = True) -> Audit:
    """Audit the jobs ``ids``.

    ``object_keys``: the keys in the run's bucket; ``requests``: the receiver's log
    (:class:`tests.support.receiver.Received`); ``expect``: task id -> the final statuses
    allowed (default ``("completed",)``); ``callbacks``: check the receiver's log (off when
    a scenario's receiver is not the one the jobs name)."""
    ids = list(dict.fromkeys(ids))
    wanted = set(ids)
    expect = expect or {}
    out = Audit(jobs=len(ids))
    problems = out.problems
    with db_engine.connect() as conn:
        rows = {r["task_id"]: dict(r) for r in conn.execute(_ROWS, {"ids": ids}).mappings()}
        outbox: dict[str, dict[str, int]] = defaultdict(dict)
        for task_id, event, count in conn.execute(_OUTBOX, {"ids": ids}):
            outbox[task_id][event] = int(count)
        succeeded: dict[str, dict[str, int]] = defaultdict(dict)
        for task_id, stage, count in conn.execute(_SUCCEEDED, {"ids": ids}):
            succeeded[task_id][stage] = int(count)
        late = [(t, started, deadline) for t, started, deadline in conn.execute(
            _FIRST_START, {"ids": ids, "stages": list(WORK_STAGES)}) if started > deadline]
    keys = defaultdict(set)
    for key in object_keys:
        name = key.rsplit("/", 1)[-1]
        stem = name.rsplit(".", 1)[0]
        if key.startswith("videos/") and stem in wanted:
            keys[stem].add(name)
    delivered: dict[str, set[str]] = defaultdict(set)
    statuses_sent: dict[str, set[str]] = defaultdict(set)
    for request in requests:
        payload = getattr(request, "payload", None)
        if not getattr(request, "verified", False) or not isinstance(payload, dict):
            continue
        task_id = payload.get("task_id")
        if task_id in wanted:
            delivered[task_id].add(request.headers.get("webhook-id", ""))
            statuses_sent[task_id].add(str(payload.get("status")))

    out.admitted = len(rows)
    for task_id in ids:
        row = rows.get(task_id)
        if row is None:
            out.lost += 1
            _note(problems, task_id, "no row")
            continue
        status = row["status"]
        out.statuses[status] = out.statuses.get(status, 0) + 1
        settled = row["callback_status"] in SETTLED or not row["callback_url"]
        if status not in FINAL or not settled:
            out.lost += 1
            _note(problems, task_id, f"not final: {status}, callback {row['callback_status']}")
            continue
        out.final += 1
        allowed = expect.get(task_id, ("completed",))
        if status not in allowed and f"{status}:{row['error_code']}" not in allowed:
            out.unexpected += 1
            _note(problems, task_id, f"{status} ({row['error_code']})")
        events = outbox.get(task_id, {})
        twice = [f"{e} x{n}" for e, n in events.items() if n > 1]
        finals = sum(n for e, n in events.items() if e in FINAL)
        if finals > 1:
            twice.append(f"{finals} final statuses")
        twice += [f"{s} succeeded x{n}" for s, n in succeeded.get(task_id, {}).items() if n > 1]
        if twice:
            out.duplicated += 1
            _note(problems, task_id, "twice: " + ", ".join(twice))
        names = keys.get(task_id, set())
        if status == "completed":
            out.completed += 1
            if f"{task_id}.mp4" not in names:
                out.missing_videos += 1
                _note(problems, task_id, "no video")
        elif names:
            out.extra_videos += 1
            _note(problems, task_id, f"objects of a {status} job: {sorted(names)}")
        if callbacks and row["callback_url"]:
            ids_seen = delivered.get(task_id, set())
            sent = statuses_sent.get(task_id, set())
            if row["callback_status"] == "delivered" and (len(ids_seen) != 1
                                                          or sent != {status}):
                out.callbacks_bad += 1
                _note(problems, task_id, f"callback ids {sorted(ids_seen)}, statuses "
                                         f"{sorted(sent)} for a {status} job")
            elif row["callback_status"] != "delivered":
                out.callbacks_bad += 1
                _note(problems, task_id, f"callback {row['callback_status']}, ids "
                                         f"{sorted(ids_seen)}")
    for task_id, started, deadline in late:
        out.past_deadline += 1
        _note(problems, task_id, f"started {started.isoformat()} past its deadline "
                                 f"{deadline.isoformat()}")
    return out
