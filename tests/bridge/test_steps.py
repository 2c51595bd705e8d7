"""Fast unit tests of the bridge's small parts: watermark, backpressure, guard, URL memo,
batch decoding."""

from __future__ import annotations

import json
import os

import pytest
from kafka import TopicPartition
from kafka.errors import CommitFailedError
from kafka.consumer.fetcher import ConsumerRecord

from bridge.backpressure import Backlog, Backpressure
from bridge.commit import Watermark
from bridge.consumer import Rebalance
from bridge.loop import Every, Loop
from bridge.decode import decode_batch
from bridge.guard import InvalidRatio, InvalidRatioExceeded
from bridge.urls import InputChecks, Memo
from pipeline.errors import InputError
from tests.pipeline.checks import callback_scheme_check, scheme_check
from pipeline.settings import load

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


class TestWatermark:
    def test_commits_only_the_contiguous_durable_prefix(self) -> None:
        w = Watermark()
        for offset in (5, 6, 7, 8):
            w.track(TP0, offset)
        w.done(TP0, 6)
        w.done(TP0, 8)
        assert w.offsets() == {}  # 5 is not durable: nothing may be committed
        w.done(TP0, 5)
        assert w.offsets()[TP0].offset == 7  # 5, 6 durable; 7 not yet
        w.done(TP0, 7)
        assert w.offsets()[TP0].offset == 9

    def test_partitions_are_independent_and_commits_remembered(self) -> None:
        w = Watermark()
        w.track(TP0, 0)
        w.track(TP1, 10)
        w.done(TP1, 10)
        offsets = w.offsets()
        assert list(offsets) == [TP1] and offsets[TP1].offset == 11
        assert offsets[TP1].metadata == "" and offsets[TP1].leader_epoch == -1
        w.committed(offsets)
        assert w.offsets() == {}  # nothing new to commit

    def test_rewind_returns_the_first_pending_offset(self) -> None:
        w = Watermark()
        for offset in (3, 4, 5):
            w.track(TP0, offset)
        w.done(TP0, 3)
        assert w.rewind(TP0) == 4
        assert w.offsets()[TP0].offset == 4
        w.done(TP0, 5)  # a late outcome after the rewind changes nothing
        assert w.offsets()[TP0].offset == 4

    def test_dropped_partitions_are_never_committed(self) -> None:
        w = Watermark()
        w.track(TP0, 1)
        w.done(TP0, 1)
        w.drop([TP0])
        assert w.offsets() == {}

    def test_a_position_that_went_back_restarts_the_partition_and_never_lowers_it(self) -> None:
        w = Watermark()
        for offset in (0, 1, 2, 3):
            w.track(TP0, offset)
        w.done(TP0, 0)
        w.done(TP0, 1)
        # The partition came back with its committed position: 0..3 are delivered again.
        for offset in (0, 1, 2, 3):
            w.track(TP0, offset)
        assert w.pending() == 4
        w.done(TP0, 0)
        assert w.offsets()[TP0].offset == 2  # not 1: what was durable stays durable
        for offset in (1, 2, 3):
            w.done(TP0, offset)
        assert w.offsets()[TP0].offset == 4 and w.pending() == 0


class FakeConsumer:
    """What the rebalance listener and the final commit use of a KafkaConsumer: it holds
    TP0 and TP1 and refuses its first ``refusals`` commits (a rebalance under way)."""

    def __init__(self, refusals: int = 0) -> None:
        self.refusals, self.commits, self.polls = refusals, [], 0
        self.paused: list[TopicPartition] = []

    def assignment(self) -> set[TopicPartition]:
        return {TP0, TP1}

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.extend(partitions)

    def poll(self, timeout_ms: int) -> dict:
        assert set(self.paused) == {TP0, TP1}  # the polls that finish a rebalance fetch nothing
        self.polls += 1
        return {}

    def commit(self, offsets: dict) -> None:
        if self.refusals:
            self.refusals -= 1
            raise CommitFailedError("the group is rebalancing")
        self.commits.append({tp: m.offset for tp, m in offsets.items()})


class TestRebalance:
    def test_only_partitions_that_went_away_are_gone(self) -> None:
        consumer = FakeConsumer()
        r = Rebalance(consumer)  # type: ignore[arg-type]
        # An eager rebalance revokes everything, then gives TP0 back: TP0 keeps its
        # position (and its in-flight offsets), TP1 moved to another member.
        r.on_partitions_revoked({TP0, TP1})
        assert r.take_gone() == set()  # nothing decided before the assignment
        r.on_partitions_assigned({TP0})
        assert r.take_gone() == {TP1}
        r.on_partitions_lost({TP0})  # lost: its position is reset, its records come again
        assert r.take_gone() == {TP0} and r.take_gone() == set()
        assert consumer.paused == []

    def test_new_partitions_stay_paused_while_paused(self) -> None:
        consumer = FakeConsumer()
        r = Rebalance(consumer)  # type: ignore[arg-type]
        r.paused = True
        r.on_partitions_assigned({TP0, TP1})
        assert set(consumer.paused) == {TP0, TP1}


class TestBackpressure:
    def test_pauses_at_high_and_resumes_below_low(self) -> None:
        bp = Backpressure(high=100, low=80, batch_max=50)
        assert bp.flow(0).max_records == 50 and not bp.flow(0).paused
        assert bp.flow(70).max_records == 30  # polls are capped at the headroom
        assert bp.flow(100).paused
        assert bp.flow(90).paused  # between low and high: stays paused
        assert not bp.flow(79).paused

    def test_backlog_recounts_on_an_interval_and_adds_admitted(self) -> None:
        now = [0.0]
        counts = iter([10, 3])
        backlog = Backlog(lambda: next(counts), refresh_s=0.2, clock=lambda: now[0])
        assert backlog.value() == 10
        backlog.add(5)
        assert backlog.value() == 15
        now[0] = 0.3
        assert backlog.value() == 3


class TestInvalidRatio:
    def test_trips_over_the_ratio_once_enough_was_seen(self) -> None:
        guard = InvalidRatio(max_ratio=0.5, window=20)
        guard.observe([False, True, False, True])  # 50%: not over
        with pytest.raises(InvalidRatioExceeded):
            guard.observe([True])

    def test_the_window_slides(self) -> None:
        guard = InvalidRatio(max_ratio=0.5, window=10)
        guard.observe([False] * 10)
        guard.observe([True] * 5)  # 5 of the last 10
        with pytest.raises(InvalidRatioExceeded):
            guard.observe([True])


class TestUrlMemo:
    def test_a_directory_is_checked_once_and_names_lexically(self) -> None:
        calls: list[str] = []

        def check(url: str, settings: object) -> None:
            calls.append(url)
            if os.path.normpath(url).startswith("/etc/"):
                raise InputError("outside", code="input.forbidden_url")

        checks = InputChecks(check)
        settings = load()
        checks("/uploads/u1/a.mp3", settings)
        checks("/uploads/u1/b.mp3", settings)
        assert len(calls) == 1
        with pytest.raises(InputError):  # its directory resolves outside: refused
            checks("/uploads/u1/../../etc/passwd", settings)
        with pytest.raises(InputError):  # a last component that moves: the full check
            checks("/etc/x/y/..", settings)
        assert calls[-1] == "/etc/x/y/.."
        for _ in range(2):
            with pytest.raises(InputError):
                checks("/etc/x/passwd", settings)
        checks("s3://bucket/key", settings)
        assert calls[-1] == "s3://bucket/key"

    def test_entries_expire(self) -> None:
        now = [0.0]
        memo = Memo(ttl_s=10, clock=lambda: now[0])
        runs: list[int] = []
        memo.check("k", lambda: runs.append(1))
        memo.check("k", lambda: runs.append(1))
        now[0] = 11
        memo.check("k", lambda: runs.append(1))
        assert len(runs) == 2


def record(offset: int, value: bytes | None, key: bytes | None = b"k") -> ConsumerRecord:
    return ConsumerRecord("t", 0, 0, offset, 1_700_000_000_000, 0, key, value, [], None,
                          len(key or b""), len(value or b""), -1)


def test_decode_batch_builds_rows_and_rejections() -> None:
    settings = load()
    good = json.dumps({"task_id": "a", "audio_url": "/uploads/a.mp3",
                       "image_url": "/uploads/a.jpg", "z": 1}).encode()
    out = decode_batch([record(0, good), record(1, b"{"), record(2, good, key=None)],
                       settings, scheme_check, callback_scheme_check)
    assert out.invalid == [False, True, False]
    assert [r[0] for r in out.rows] == ["a", "a"]
    first = dict(zip(["task_id", "topic", "partition", "offset", "key", "ordering_key"],
                     out.rows[0]))
    assert first == {"task_id": "a", "topic": "t", "partition": 0, "offset": 0, "key": "k",
                     "ordering_key": "k"}  # the Kafka key is the default ordering key
    assert out.rows[1][5] is None
    assert json.loads(out.rows[0][12])["z"] == 1  # the payload keeps unknown fields
    (rejection,) = out.rejections
    assert rejection.error.code == "message.invalid_json" and rejection.row() is None


class TestFinalCommit:
    """On shutdown the loop commits what is durable even when a rebalance refuses the first
    try: it pauses its partitions and polls (no records) until the commit goes through."""

    def loop(self, consumer: FakeConsumer) -> Loop:
        loop = Loop.__new__(Loop)  # only the consumer, the listener and the watermark
        loop.consumer, loop.rebalance = consumer, Rebalance(consumer)  # type: ignore[arg-type]
        loop.watermark = Watermark()
        for offset in (0, 1, 2):
            loop.watermark.track(TP0, offset)
            loop.watermark.done(TP0, offset)
        return loop

    def test_a_refused_commit_is_retried_after_the_rebalance(self) -> None:
        consumer = FakeConsumer(refusals=2)
        self.loop(consumer).final_commit(timeout_s=5)
        assert consumer.commits == [{TP0: 3}] and consumer.polls == 2

    def test_it_gives_up_at_the_deadline(self) -> None:
        consumer = FakeConsumer(refusals=10**6)
        loop = self.loop(consumer)
        loop.final_commit(timeout_s=0.05)
        assert consumer.commits == [] and consumer.polls >= 1
        assert loop.watermark.offsets()[TP0].offset == 3  # still owed, not forgotten


def test_a_periodic_step_waits_its_interval_after_a_slow_run(monkeypatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("bridge.loop.time.monotonic", lambda: clock[0])
    runs = []

    def slow_failing() -> None:  # takes 5 s, then meets a lock timeout
        runs.append(clock[0])
        clock[0] += 5.0
        raise OSError("canceling statement due to lock timeout\nSQL: ...")

    step = Every(1.0, slow_failing, "reconciler")
    step()
    assert runs == []  # not before its first interval
    clock[0] = 101.0
    step()  # runs, fails (logged, not raised) and ends at 106
    clock[0] = 106.5
    step()
    assert runs == [101.0]  # a second later than its end, not at once
    clock[0] = 107.0
    step()
    assert runs == [101.0, 107.0]


@pytest.mark.parametrize(("value", "kept"), [
    # Out of range, wrong type, invalid JSON with a readable id: the allowed URL is kept.
    ({"task_id": "r1", "audio_url": "/uploads/a.mp3", "image_url": "/uploads/a.jpg",
      "config": {"min_resolution": 100000}, "callback_url": "https://hooks.example.com/cb"},
     "https://hooks.example.com/cb"),
    ({"task_id": "r2", "audio_url": 7, "image_url": "/uploads/a.jpg",
      "callback_url": "https://hooks.example.com/cb"}, "https://hooks.example.com/cb"),
    (b'{"task_id": "r3", "callback_url": "https://hooks.example.com/cb"} trailing',
     "https://hooks.example.com/cb"),
    # A callback URL the checks refuse, or none, or no task id: nothing to deliver to.
    ({"task_id": "r4", "audio_url": 7, "image_url": "/uploads/a.jpg",
      "callback_url": "ftp://hooks.example.com/cb"}, None),
    ({"task_id": "r5", "audio_url": 7, "image_url": "/uploads/a.jpg"}, None),
    ({"audio_url": 7, "callback_url": "https://hooks.example.com/cb"}, None),
])
def test_a_rejected_message_keeps_an_allowed_callback_url(value, kept) -> None:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    out = decode_batch([record(0, raw)], load(), scheme_check, callback_scheme_check)
    (rejection,) = out.rejections
    row = rejection.row()
    assert (row.callback_url if row is not None else None) == kept
    assert rejection.callback_url == kept
