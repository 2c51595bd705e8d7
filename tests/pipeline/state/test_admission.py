"""Batch admission on the real PostgreSQL: the bridge's way (settle for the jobs with
``depends_on``, then ``hold`` for the candidates admit named) ends every job in the same
status, with the same error code, status events, ``task_events`` and tenant counts, as
settling every new job (settle's own rule, the reference), over many batch shapes: keys
repeated in a batch and across partitions, keys held by earlier jobs in every state,
redelivered duplicates, dependencies completed, failed, unknown, cyclic or in the same
batch, jobs without a key, rejects; then random batches."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.scheduler.settle import settle
from pipeline.state.admission import (TASK_COLUMNS, RejectRow, _copy_value, admit, copy_text,
                                      hold)

pytestmark = pytest.mark.integration


@dataclass
class Job:
    name: str
    key: str | None = None
    deps: tuple[str, ...] = ()
    partition: int = 0
    offset: int = 0


@dataclass
class Shape:
    """Jobs admitted and ended before (``ended``: name -> final status, else left
    received), then one batch (``batch``, in poll order; ``rejects``: names refused at the
    door)."""

    before: list[Job] = field(default_factory=list)
    ended: dict[str, str] = field(default_factory=dict)
    batch: list[Job] = field(default_factory=list)
    rejects: tuple[str, ...] = ()


class Run:
    """One shape on a topic of its own; every name and key carries the topic's prefix."""

    def __init__(self, db: Engine, topic: str, bridge_way: bool) -> None:
        self.db, self.topic, self.bridge_way = db, topic, bridge_way

    def id(self, name: str) -> str:
        return f"{self.topic}.{name}"

    def row(self, job: Job) -> tuple[Any, ...]:
        payload = {"task_id": self.id(job.name), "image_url": "/uploads/a.jpg",
                   "audio_url": "/uploads/a.wav"}
        values = {"task_id": self.id(job.name), "kafka_topic": self.topic,
                  "kafka_partition": job.partition, "kafka_offset": job.offset,
                  "kafka_key": job.key and self.id(job.key),
                  "ordering_key": job.key and self.id(job.key), "priority": 5,
                  "depends_on": [self.id(d) for d in job.deps], "deadline": None,
                  "payload": json.dumps(payload), "config": "{}"}
        return tuple(values.get(column) for column in TASK_COLUMNS)

    def admit(self, jobs: list[Job], rejects: tuple[str, ...] = ()) -> None:
        refused = [RejectRow(self.id(n), self.topic, 9, i, None, "message.missing_field",
                             "field 'audio_url' is required") for i, n in enumerate(rejects)]
        raw = self.db.raw_connection()
        try:
            cur = raw.cursor()
            done = admit(cur, [self.row(j) for j in jobs], refused)
            if self.bridge_way:
                settle(cur, done.to_settle)
                hold(cur, done.to_hold)
            else:
                settle(cur, done.new)
            raw.commit()
        finally:
            raw.close()

    def end(self, ended: dict[str, str]) -> None:
        with self.db.begin() as conn:
            for name, status in ended.items():  # one statement each: the release trigger runs
                conn.execute(text("UPDATE tasks SET status = :s, finished_at = now(), "
                                  "error_code = CASE WHEN :s = 'failed' THEN 'engine.failed' "
                                  "END WHERE task_id = :t"), {"s": status, "t": self.id(name)})

    def play(self, shape: Shape) -> None:
        if shape.before:
            self.admit(shape.before)
        self.end(shape.ended)
        self.admit(shape.batch, shape.rejects)

    def outcome(self) -> dict[str, Any]:
        """Per job (by name): status, error code, status events, task_events; the counts."""
        cut = len(self.topic) + 1
        with self.db.connect() as conn:
            jobs = {r.task_id[cut:]: (r.status, r.error_code) for r in conn.execute(text(
                "SELECT task_id, status, error_code FROM tasks WHERE kafka_topic = :t"),
                {"t": self.topic})}
            told = [(r.task_id[cut:], r.event, r.status) for r in conn.execute(text(
                "SELECT task_id, event, body->>'status' AS status FROM status_outbox "
                "WHERE topic = :t ORDER BY task_id, seq"), {"t": self.topic})]
            events = [(r.task_id[cut:], r.event) for r in conn.execute(text(
                "SELECT e.task_id, e.event FROM task_events e JOIN tasks t USING (task_id) "
                "WHERE t.kafka_topic = :t ORDER BY e.task_id, e.id"), {"t": self.topic})]
            counts = [tuple(r) for r in conn.execute(text(
                "SELECT runnable, waiting, inflight FROM tenants WHERE topic = :t"),
                {"t": self.topic})]
        return {"jobs": jobs, "told": told, "events": events, "counts": counts}

    def clean(self) -> None:
        with self.db.begin() as conn:
            conn.execute(text("DELETE FROM status_outbox WHERE topic = :t"), {"t": self.topic})
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": self.topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": self.topic})


@pytest.fixture
def compare(db_engine: Engine, unique: str) -> Iterator[Any]:
    runs: list[Run] = []

    def play(shape: Shape) -> dict[str, Any]:
        n = len(runs)
        ref = Run(db_engine, f"t-adm-{unique}-{n}r", bridge_way=False)
        ours = Run(db_engine, f"t-adm-{unique}-{n}b", bridge_way=True)
        runs.extend((ref, ours))
        ref.play(shape)
        ours.play(shape)
        expected, got = ref.outcome(), ours.outcome()
        assert got == expected
        return got

    yield play
    for run in runs:
        run.clean()


def at(name: str, key: str | None, offset: int, partition: int = 0,
       deps: tuple[str, ...] = ()) -> Job:
    return Job(name, key, deps, partition, offset)


SHAPES = {
    "one key per job (the benchmark's shape)": Shape(
        batch=[at(f"j{i}", f"k{i}", i, i % 4) for i in range(12)]),
    "a key repeated in the batch, across partitions, out of poll order": Shape(
        batch=[at("c", "k", 5, 1), at("a", "k", 7, 0), at("b", "k", 3, 1), at("d", "k", 9, 0)]),
    "a key held by a job received earlier": Shape(
        before=[at("old", "k", 0)], batch=[at("new", "k", 1), at("other", "z", 2)]),
    "a key whose earlier jobs ended in every final status": Shape(
        before=[at(s, "k", i) for i, s in enumerate(("completed", "failed", "cancelled",
                                                     "expired"))],
        ended={s: s for s in ("completed", "failed", "cancelled", "expired")},
        batch=[at("new", "k", 9)]),
    "a redelivered job of a finished key before a new one of that key": Shape(
        before=[at("old", "k", 0)], ended={"old": "completed"},
        batch=[at("old", "k", 0), at("new", "k", 1)]),
    "a redelivered job still received before a new one of its key": Shape(
        before=[at("old", "k", 0)], batch=[at("old", "k", 0), at("new", "k", 1)]),
    "the same job twice in one batch": Shape(
        batch=[at("a", "k", 0), at("a", "k", 1), at("b", "k", 2)]),
    "dependencies completed, failed, unknown, cyclic, in the batch": Shape(
        before=[at("done", None, 0), at("bad", None, 1)],
        ended={"done": "completed", "bad": "failed"},
        batch=[at("on-done", None, 2, deps=("done",)), at("on-bad", None, 3, deps=("bad",)),
               at("on-unknown", None, 4, deps=("nobody",)), at("self", None, 5, deps=("self",)),
               at("parent", None, 6), at("child", None, 7, deps=("parent",)),
               at("x", None, 8, deps=("y",)), at("y", None, 9, deps=("x",))]),
    "a keyed job failed by its dependency before a plain job of its key": Shape(
        before=[at("bad", None, 0)], ended={"bad": "failed"},
        batch=[at("first", "k", 1, deps=("bad",)), at("second", "k", 2)]),
    "a keyed job cyclic before a plain job of its key": Shape(
        batch=[at("first", "k", 1, deps=("first",)), at("second", "k", 2)]),
    "a keyed job waiting for a dependency before a plain job of its key": Shape(
        before=[at("slow", None, 0)],
        batch=[at("first", "k", 1, deps=("slow",)), at("second", "k", 2)]),
    "a plain job before a keyed job with a completed dependency": Shape(
        before=[at("done", None, 0)], ended={"done": "completed"},
        batch=[at("first", "k", 1), at("second", "k", 2, deps=("done",))]),
    "jobs without a key, and rejects beside them": Shape(
        batch=[at("a", None, 0), at("b", None, 1), at("c", "k", 2)], rejects=("r1", "r2")),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_the_bridge_way_settles_as_settle_does(compare: Any, name: str) -> None:
    compare(SHAPES[name])


def test_shapes_exercise_holding_and_releasing(compare: Any) -> None:
    """The comparison is not vacuous: jobs do wait for their key, and are released."""
    got = compare(SHAPES["a key repeated in the batch, across partitions, out of poll order"])
    assert got["jobs"] == {"a": ("received", None), "d": ("waiting", None),  # seq order:
                           "b": ("waiting", None), "c": ("waiting", None)}  # partition, offset
    got = compare(SHAPES["a keyed job failed by its dependency before a plain job of its key"])
    assert got["jobs"]["first"] == ("failed", "dependency.failed")
    assert got["jobs"]["second"] == ("received", None)
    got = compare(SHAPES["a redelivered job of a finished key before a new one of that key"])
    assert got["jobs"]["new"] == ("received", None)
    assert ("old", "duplicate") in got["events"]


def test_random_batches(compare: Any) -> None:
    rng = random.Random(12)
    for _ in range(6):
        names = [f"n{i}" for i in range(14)]
        jobs = [at(n, rng.choice(["k1", "k2", "k3", None]), i, rng.randrange(3),
                   tuple(rng.sample(names[:i + 2], rng.choice([0, 0, 0, 1, 2]))))
                for i, n in enumerate(names)]
        split = rng.randrange(1, 10)
        before, batch = jobs[:split], jobs[split:]
        ended = {j.name: rng.choice(["completed", "failed", "cancelled"])
                 for j in before if rng.random() < 0.5}
        batch += [rng.choice(before) for _ in range(2)]  # redelivered
        rng.shuffle(batch)
        compare(Shape(before, ended, batch))


@pytest.mark.parametrize("value, line", [
    (("a", None, 5, [], ["x", "y"]), "a\t\\N\t5\t\\N\t{\"x\",\"y\"}\n"),
    (("tab\there", "new\nline", "cr\r", "back\\slash", "\\N"),
     "tab\\there\tnew\\nline\tcr\\r\tback\\\\slash\t\\\\N\n"),
    (('{"a":"b\\\\c"}', "ok"), '{"a":"b\\\\\\\\c"}\tok\n'),
    (([], ["q\"uote", "b\\s"], "é"), "\\N\t{\"q\\\\\"uote\",\"b\\\\\\\\s\"}\té\n"),
])
def test_copy_text_escapes_what_copy_would_misread(value: tuple[Any, ...], line: str) -> None:
    assert copy_text([value]) == line


def test_copy_text_matches_escaping_field_by_field() -> None:
    """The joined-line shortcut never skips an escape the per-field path would make."""
    rng = random.Random(7)
    alphabet = ["a", "\t", "\n", "\r", "\\", "N", "\"", "{", ",", "é", " "]

    def value() -> Any:
        kind = rng.randrange(6)
        if kind == 0:
            return None
        if kind == 1:
            return rng.randrange(-5, 10**6)
        if kind == 2:
            return [] if rng.random() < 0.5 else ["".join(rng.choices(alphabet, k=3))]
        return "".join(rng.choices(alphabet, k=rng.randrange(0, 6)))

    for _ in range(3000):
        row = tuple(value() for _ in range(rng.randrange(1, 6)))
        assert copy_text([row]) == "\t".join(_copy_value(v) for v in row) + "\n", row


def _batch(topic: str, jobs: list[tuple[str, str | None, int]]) -> list[tuple[Any, ...]]:
    """Rows of ``(name, ordering_key, partition)`` jobs, offsets in list order."""
    out = []
    for offset, (name, key, partition) in enumerate(jobs):
        values = {"task_id": f"{topic}.{name}", "kafka_topic": topic,
                  "kafka_partition": partition, "kafka_offset": offset,
                  "ordering_key": key and f"{topic}.{key}", "priority": 5, "depends_on": [],
                  "payload": json.dumps({"task_id": f"{topic}.{name}"}), "config": "{}"}
        out.append(tuple(values.get(column) for column in TASK_COLUMNS))
    return out


@pytest.mark.parametrize("first, second, waits", [
    # one key from two partitions (so two bridges): the later batch's job waits
    ([("a1", "k", 0)], [("b1", "k", 1)], {"b1"}),
    # several jobs and keys per batch; only the shared key holds
    ([("a1", "k", 0), ("a2", "x", 0)], [("b1", "y", 1), ("b2", "k", 1)], {"b2"}),
    # the second batch holds two jobs of the key behind the first's
    ([("a1", "k", 0)], [("b1", "k", 1), ("b2", "k", 1), ("b3", None, 1)], {"b1", "b2"}),
])
def test_two_bridges_admitting_one_key_at_once_keep_its_order(
        db_engine: Engine, unique: str, first: list, second: list, waits: set[str]) -> None:
    """The second batch, begun while the first is uncommitted, inserts after it commits
    (the key buckets' locks), so its jobs of the key wait for the first's job."""
    import threading

    topic = f"adm-race-{unique}"

    def admit_bridge_way(raw: Any, rows: list[tuple[Any, ...]]) -> None:
        cur = raw.cursor()
        done = admit(cur, rows)
        settle(cur, done.to_settle)
        hold(cur, done.to_hold)

    one, two = db_engine.raw_connection(), db_engine.raw_connection()
    try:
        admit_bridge_way(one, _batch(topic, first))  # not committed yet
        finished = threading.Event()

        def second_bridge() -> None:
            admit_bridge_way(two, _batch(topic, second))
            two.commit()
            finished.set()

        thread = threading.Thread(target=second_bridge, daemon=True)
        thread.start()
        assert not finished.wait(0.5), "the second batch did not wait for the first"
        one.commit()
        thread.join(10)
        assert finished.is_set()
        with db_engine.begin() as conn:
            status = {r.task_id.split(".", 1)[1]: r.status for r in conn.execute(text(
                "SELECT task_id, status FROM tasks WHERE kafka_topic = :t"), {"t": topic})}
        assert {n for n, s in status.items() if s == "waiting"} == waits, status
        assert all(status[name] == "received" for name, _, _ in first)
    finally:
        one.close()
        two.close()
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
            conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})


def test_one_key_on_two_topics_never_makes_their_batches_wait(db_engine: Engine,
                                                              unique: str) -> None:
    """A key orders its own topic's jobs: a batch of topic B admits while a batch of
    topic A with the same key is uncommitted, and neither job waits for the other."""
    import threading

    from pipeline.state.admission import KEY_BUCKETS

    key = f"shared-{unique}"
    topic_a = f"adm-topic-a-{unique}"

    def bucket(topic: str) -> int:
        with db_engine.connect() as conn:
            return int(conn.execute(text("SELECT hashtext(:t || '/' || :k) & :m"), {
                "t": topic, "k": key, "m": KEY_BUCKETS - 1}).scalar_one())

    # the other topic's name is picked so that its bucket differs (else they would share
    # a lock by chance, 1 in KEY_BUCKETS, and the test would say nothing)
    topic_b = next(t for t in (f"adm-topic-b{i}-{unique}" for i in range(50))
                   if bucket(t) != bucket(topic_a))

    def rows(topic: str) -> list[tuple[Any, ...]]:
        values = {"task_id": f"{topic}.j", "kafka_topic": topic, "kafka_partition": 0,
                  "kafka_offset": 0, "ordering_key": key, "priority": 5, "depends_on": [],
                  "payload": json.dumps({"task_id": f"{topic}.j"}), "config": "{}"}
        return [tuple(values.get(column) for column in TASK_COLUMNS)]

    one, two = db_engine.raw_connection(), db_engine.raw_connection()
    try:
        done = admit(one.cursor(), rows(topic_a))  # not committed yet
        hold(one.cursor(), done.to_hold)
        finished = threading.Event()

        def other_topic() -> None:
            cur = two.cursor()
            hold(cur, admit(cur, rows(topic_b)).to_hold)
            two.commit()
            finished.set()

        thread = threading.Thread(target=other_topic, daemon=True)
        thread.start()
        assert finished.wait(10), "topic B's batch waited for topic A's"
        one.commit()
        thread.join(10)
        with db_engine.begin() as conn:
            status = dict(conn.execute(text(
                "SELECT task_id, status FROM tasks WHERE kafka_topic IN (:a, :b)"),
                {"a": topic_a, "b": topic_b}).all())
        assert status == {f"{topic_a}.j": "received", f"{topic_b}.j": "received"}
    finally:
        one.close()
        two.close()
        with db_engine.begin() as conn:
            for topic in (topic_a, topic_b):
                conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": topic})
                conn.execute(text("DELETE FROM tenants WHERE topic = :t"), {"t": topic})
