"""The reconciler's stalled-job step, the broker epoch and the callback age bound, against
the real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text

from pipeline import reconcile
from pipeline.epoch import RedisEpoch
from pipeline.settings import Settings
from tests.bridge.test_reconcile import insert, row

pytestmark = pytest.mark.integration

#: Redis database of the epoch test (the suite's other tests use others).
EPOCH_REDIS_DB = 13
OLD = "now() - interval '1 hour'"
AGES_AGO = "now() - interval '3 days'"


class FakeBroker:
    def __init__(self, token: str | None) -> None:
        self.token, self.confirmed = token, []

    def restarted(self) -> str | None:
        return self.token

    def confirm(self, token: str) -> None:
        self.confirmed.append(token)
        self.token = None


@pytest.fixture
def topic(db_engine: Engine, unique: str) -> Iterator[str]:
    name = f"test-stalled-{unique}"
    yield name
    with db_engine.begin() as conn:
        conn.execute(text("DELETE FROM task_events WHERE task_id LIKE :p"), {"p": f"{name}-%"})
        conn.execute(text("DELETE FROM tasks WHERE kafka_topic = :t"), {"t": name})


def sweep(db_engine: Engine, topic: str, sent: list, **kw: object) -> reconcile.Sweep:
    options: dict[str, object] = {"max_attempts": 3,
                                  "stalled_after_s": 600, "callback_max_age_s": 86400}
    options.update(kw)
    return reconcile.sweep(db_engine, topic=topic, dispatch=lambda *a: sent.append(a),
                           **options)  # type: ignore[arg-type]


def seed_jobs(db_engine: Engine, topic: str) -> None:
    """One job in each place a lost message can leave it, and some that must be left alone."""
    t = topic
    insert(db_engine, t, f"{t}-queued", status="queued", stage="preprocess", updated_at=OLD)
    insert(db_engine, t, f"{t}-between", status="running", stage="encode", updated_at=OLD)
    insert(db_engine, t, f"{t}-hook", status="completed", stage="callback", updated_at=OLD,
           finished_at=OLD, callback_url="http://127.0.0.1:9/hook")
    insert(db_engine, t, f"{t}-hook-retrying", status="failed", stage="preprocess",
           updated_at=OLD, finished_at=OLD, callback_status="retrying",
           callback_url="http://127.0.0.1:9/hook")
    # Left alone: recent, leased, settled, rejected, not yet dispatched.
    insert(db_engine, t, f"{t}-fresh", status="queued", stage="preprocess")
    insert(db_engine, t, f"{t}-leased", status="running", stage="gpu", updated_at=OLD,
           lease_owner="w1", lease_stage="gpu", lease_expires_at="now() + interval '1 minute'")
    insert(db_engine, t, f"{t}-delivered", status="completed", stage="callback", updated_at=OLD,
           finished_at=OLD, callback_status="delivered")
    insert(db_engine, t, f"{t}-rejected", status="rejected", updated_at=OLD, finished_at=OLD)


def test_jobs_whose_message_vanished_are_sent_again_from_their_stage(
        db_engine: Engine, topic: str) -> None:
    seed_jobs(db_engine, topic)
    sent: list[tuple[str, int, str]] = []
    out = sweep(db_engine, topic, sent)
    expected = sorted([(f"{topic}-queued", 4, "preprocess"), (f"{topic}-between", 4, "encode"),
                       (f"{topic}-hook", 4, "callback"),
                       (f"{topic}-hook-retrying", 4, "callback")])
    assert sorted(sent) == expected
    assert sorted(out.stalled) == sorted((t, s) for t, _, s in expected)
    assert row(db_engine, f"{topic}-leased")["lease_owner"] == "w1"
    # Each re-send bumps updated_at: a second sweep sends nothing more.
    again: list[tuple[str, int, str]] = []
    assert sweep(db_engine, topic, again).stalled == [] and again == []
    with db_engine.connect() as conn:
        events = conn.execute(text(
            "SELECT task_id, stage, event, detail->>'reason' FROM task_events "
            "WHERE task_id LIKE :p"), {"p": f"{topic}-%"}).all()
    assert sorted(events) == sorted((t, s, "requeued", "stalled") for t, _, s in expected)


def test_without_a_stall_setting_only_a_broker_restart_sends_them(db_engine: Engine,
                                                                   topic: str) -> None:
    seed_jobs(db_engine, topic)
    sent: list[tuple[str, int, str]] = []
    assert sweep(db_engine, topic, sent, stalled_after_s=None).stalled == [] and sent == []
    broker = FakeBroker("run-2")
    out = sweep(db_engine, topic, sent, stalled_after_s=None, broker=broker)
    assert out.broker_restarted and len(out.stalled) == 5  # the fresh one too
    assert broker.confirmed == ["run-2"]


def test_a_broker_restart_sends_every_leaseless_job_at_once_whatever_its_age(
        db_engine: Engine, topic: str) -> None:
    seed_jobs(db_engine, topic)
    sent: list[tuple[str, int, str]] = []
    broker = FakeBroker("run-2")
    out = sweep(db_engine, topic, sent, broker=broker)
    stages = dict(out.stalled)
    # The recent queued job too: its message was in the Redis that restarted.
    assert stages == {f"{topic}-queued": "preprocess", f"{topic}-between": "encode",
                      f"{topic}-hook": "callback", f"{topic}-hook-retrying": "callback",
                      f"{topic}-fresh": "preprocess"}
    assert broker.confirmed == ["run-2"]
    assert sweep(db_engine, topic, [], broker=broker).stalled == []


def test_callbacks_are_given_up_after_the_max_age(db_engine: Engine, topic: str) -> None:
    t = topic
    insert(db_engine, t, f"{t}-old-lease", status="completed", stage="callback",
           finished_at=AGES_AGO, lease_owner="w9", lease_stage="callback",
           lease_expires_at="now() - interval '1 minute'", callback_status="retrying",
           callback_url="http://127.0.0.1:9/hook")
    insert(db_engine, t, f"{t}-old-stalled", status="failed", stage="gpu", updated_at=OLD,
           finished_at=AGES_AGO, callback_url="http://127.0.0.1:9/hook")
    insert(db_engine, t, f"{t}-young-lease", status="completed", stage="callback",
           finished_at=OLD, lease_owner="w9", lease_stage="callback",
           lease_expires_at="now() - interval '1 minute'", callback_status="retrying",
           callback_url="http://127.0.0.1:9/hook")
    sent: list[tuple[str, int, str]] = []
    out = sweep(db_engine, t, sent, callback_max_age_s=2 * 86400)
    assert sent == [(f"{t}-young-lease", 4, "callback")]
    assert sorted(out.callbacks_expired) == [f"{t}-old-lease", f"{t}-old-stalled"]
    for task_id, status in ((f"{t}-old-lease", "completed"), (f"{t}-old-stalled", "failed")):
        r = row(db_engine, task_id)
        assert (r["status"], r["callback_status"], r["lease_owner"]) == (status, "failed", None)
    # Settled: never sent again, even after a broker restart; the young one is.
    again = sweep(db_engine, t, [], broker=FakeBroker("run-3"))
    assert again.stalled == [(f"{t}-young-lease", "callback")]
    assert again.callbacks_expired == []


def test_redis_epoch_is_the_run_id_remembered_in_postgres(stack: Settings,
                                                          db_engine: Engine) -> None:
    # A database of its own: the test flushes it.
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=EPOCH_REDIS_DB)
    topic = f"test-epoch-{uuid.uuid4().hex[:8]}"
    epoch = RedisEpoch(client, db_engine, topic)
    try:
        run_id = client.info("server")["run_id"]
        assert epoch.restarted() is None  # the first server a topic sees is only recorded
        assert epoch.restarted() is None
        with db_engine.begin() as conn:  # as if Redis restarted since
            conn.execute(text("UPDATE broker_epochs SET run_id = 'an-older-run' "
                              "WHERE topic = :t"), {"t": topic})
        assert epoch.restarted() == run_id
        assert epoch.restarted() == run_id  # until confirmed
        epoch.confirm(run_id)
        assert epoch.restarted() is None
        client.flushdb()  # Redis's data is not where the epoch lives
        assert epoch.restarted() is None
    finally:
        with db_engine.begin() as conn:
            conn.execute(text("DELETE FROM broker_epochs WHERE topic = :t"), {"t": topic})
        client.close()
