"""The credential pool on the real Redis: keys and their limits, the moving windows under
contention (threads and two processes), the global cap, the three strategies, cool-down,
disable and enable, and the CLI's view of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from pydantic import SecretStr

from pipeline.engines.credentials import (CredentialPool, Grant, Outcome, Refusal, key_id,
                                          parse_keys)
from pipeline.engines.credentials.keys import WINDOW_GUARD_MS
from pipeline.errors import ConfigError
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

#: Redis database of these tests (and of the remote engine's).
CRED_REDIS_DB = 9


@pytest.fixture
def client(stack: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=CRED_REDIS_DB)
    yield client
    client.close()


def make_pool(client: redis.Redis, unique: str, keys: str, rate: str = "100/second",
              **options: object) -> CredentialPool:
    settings = dict(strategy="round_robin", max_concurrent=50, lease_s=60,
                    cooldown_min_s=1.0, cooldown_max_s=8.0)
    settings.update(options)
    return CredentialPool(client, parse_keys(SecretStr(keys), rate),
                          prefix=f"test:{unique}:{{pool}}:", **settings)  # type: ignore[arg-type]


def take(pool: CredentialPool) -> Grant:
    got = pool.acquire()
    assert isinstance(got, Grant), got
    return got


# --- keys -----------------------------------------------------------------------------------

def test_keys_come_plain_or_as_json_and_are_named_by_a_hash() -> None:
    plain = parse_keys(SecretStr(" alpha, beta ,alpha,"), "2/second;30/minute")
    assert [k.id for k in plain] == [key_id("alpha"), key_id("beta")]
    assert plain[0].windows[0].amount == 2 and plain[0].windows[0].span_ms == 1000 + \
        WINDOW_GUARD_MS
    assert plain[0].windows[1].amount == 30 and plain[0].windows[1].span_ms == 60_000 + \
        WINDOW_GUARD_MS
    assert "alpha" not in repr(plain) and key_id("alpha").startswith("k")
    rich = parse_keys(SecretStr('[{"key": "a", "weight": 3, "rate": "1/second"}, "b"]'), "9/second")
    assert [(k.weight, k.rate) for k in rich] == [(3, "1/second"), (1, "9/second")]
    assert parse_keys(None, "1/second") == [] and parse_keys(SecretStr(" "), "1/second") == []


@pytest.mark.parametrize("value", ['[{"key": ""}]', '[{"key": "sekrit", "weight": 0}]',
                                   '[{"key": "sekrit", "weight": 1.5}]', '[{"nokey": "sekrit"}]',
                                   '[{"key": "sekrit"', '[42]',
                                   '[{"key": "sekrit", "rate": "often"}]'])
def test_a_malformed_key_list_is_a_config_error_that_never_quotes_a_key(value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_keys(SecretStr(value), "1/second")
    assert refused.value.code == "config.invalid" and "sekrit" not in str(refused.value)


# --- limits under contention --------------------------------------------------------------

def most_in_window(times: list[float], window_s: float) -> int:
    times, most, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_threads_never_take_more_than_a_keys_limit_in_any_window(client: redis.Redis,
                                                                 unique: str) -> None:
    """12 threads race for one key allowed 4/second and 10/minute for 3.5 s: exactly 10
    calls are granted (the minute's budget), never more than 4 within any second."""
    pool = make_pool(client, unique, "solo", rate="4/second;10/minute")
    granted: list[float] = []
    refused: Counter[str] = Counter()
    lock, end = threading.Lock(), time.monotonic() + 3.5

    def race() -> None:
        while time.monotonic() < end:
            got = pool.acquire()
            with lock:
                if isinstance(got, Grant):
                    granted.append(time.time())
                    pool.release(got, Outcome.OK)
                else:
                    refused[got.reason] += 1
            time.sleep(0.005)

    threads = [threading.Thread(target=race) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 10, granted
    assert most_in_window(granted, 1.0) <= 4
    assert refused["rate"] > 100 and set(refused) == {"rate"}


RACER = """
import json, sys, time
import redis
from tests.pipeline.test_credentials import make_pool
from pipeline.engines.credentials import Grant, Outcome
client = redis.Redis(port=int(sys.argv[1]), db=int(sys.argv[2]))
pool = make_pool(client, sys.argv[3], "k1,k2", rate="3/second", strategy="least_loaded")
end, got = time.time() + 2.5, []
while time.time() < end:
    grant = pool.acquire()
    if isinstance(grant, Grant):
        got.append([grant.key.id, time.time()])
        pool.release(grant, Outcome.OK)
    else:
        time.sleep(0.003)
print(json.dumps(got))
"""


def test_two_processes_share_one_pool_and_its_limits(client: redis.Redis, stack: Settings,
                                                     unique: str) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(stack.redis_port),
                               str(CRED_REDIS_DB), unique], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd()) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs) and all(results)
    for key in (key_id("k1"), key_id("k2")):
        times = [t for result in results for k, t in result if k == key]
        assert most_in_window(times, 1.0) <= 3, key
        assert len(times) >= 6  # 2.5 s at 3/s, windows 1.1 s wide: 7 or so each
    assert sum(map(len, results)) <= 2 * 3 * 3


def test_the_global_cap_bounds_calls_in_flight_and_a_dead_workers_slot_returns(
        client: redis.Redis, unique: str) -> None:
    pool = make_pool(client, unique, "a,b,c", max_concurrent=3, lease_s=1.0)
    held = [take(pool) for _ in range(3)]
    refused = pool.acquire()
    assert isinstance(refused, Refusal) and refused.reason == "capacity"
    pool.release(held[0], Outcome.OK)
    take(pool)  # one freed, one taken
    assert isinstance(pool.acquire(), Refusal)
    time.sleep(1.1)  # nobody released: the leases end by themselves
    assert [isinstance(pool.acquire(), Grant) for _ in range(4)] == [True] * 3 + [False]


# --- strategies ---------------------------------------------------------------------------------

def test_round_robin_takes_the_keys_in_turn_skipping_an_unusable_one(client: redis.Redis,
                                                                     unique: str) -> None:
    pool = make_pool(client, unique, "a,b,c")
    ids = [take(pool).key.id for _ in range(6)]
    assert Counter(ids) == {key_id("a"): 2, key_id("b"): 2, key_id("c"): 2}
    assert ids[:3] == ids[3:] and len(set(ids[:3])) == 3
    pool.release(take(pool), Outcome.AUTH)  # one is disabled: the other two alternate
    picks = [take(pool).key.id for _ in range(4)]
    assert len(set(picks)) == 2 and picks[0] != picks[1] and picks[:2] == picks[2:]


def test_weighted_gives_each_key_its_share_smoothly(client: redis.Redis, unique: str) -> None:
    pool = make_pool(client, unique, '[{"key": "a", "weight": 3}, "b", "c"]', strategy="weighted")
    ids = [take(pool).key.id for _ in range(50)]
    assert Counter(ids) == {key_id("a"): 30, key_id("b"): 10, key_id("c"): 10}
    assert all(ids[i:i + 5].count(key_id("a")) == 3 for i in range(0, 50, 5))


def test_least_loaded_picks_the_key_with_fewest_calls_in_flight(client: redis.Redis,
                                                                unique: str) -> None:
    pool = make_pool(client, unique, "a,b,c", strategy="least_loaded")
    held = [take(pool) for _ in range(6)]
    assert Counter(g.key.id for g in held) == {key_id(k): 2 for k in "abc"}
    for grant in [g for g in held if g.key.id == key_id("b")]:
        pool.release(grant, Outcome.OK)
    assert [take(pool).key.id for _ in range(2)] == [key_id("b")] * 2
    # All equal again: the next three go one to each key.
    assert {take(pool).key.id for _ in range(3)} == {key_id(k) for k in "abc"}


# --- cool-down, disable, enable -------------------------------------------------------------------

def test_cool_down_grows_from_min_to_max_honours_retry_after_and_never_shrinks(
        client: redis.Redis, unique: str) -> None:
    pool = make_pool(client, unique, "a", cooldown_min_s=0.2, cooldown_max_s=0.5)
    got = take(pool)
    assert pool.release(got, Outcome.COOL) == pytest.approx(0.2, abs=0.02)
    # A shorter fault meanwhile (the same streak) leaves the cool-down as it is; a longer
    # Retry-After lengthens it.
    assert pool.release(got, Outcome.COOL) == pytest.approx(0.2, abs=0.02)
    assert pool.release(got, Outcome.COOL, retry_after_s=1.0) == pytest.approx(1.0, abs=0.02)
    assert pool.release(got, Outcome.COOL, retry_after_s=0.3) == pytest.approx(1.0, abs=0.05)
    refused = pool.acquire()
    assert isinstance(refused, Refusal) and refused.reason == "cooling"
    assert 0.8 < refused.wait_s <= 1.0
    spans = []
    for _ in range(3):  # each fault after a cool-down ended: twice the last, at most max
        time.sleep(max(0.0, pool.snapshot()["keys"][0]["cooling_s"]) + 0.02)
        spans.append(pool.release(take(pool), Outcome.COOL))
    assert spans == pytest.approx([0.4, 0.5, 0.5], abs=0.03)
    time.sleep(0.52)
    pool.release(take(pool), Outcome.OK)  # recovered: the streak ends
    assert pool.release(take(pool), Outcome.COOL) == pytest.approx(0.2, abs=0.02)


def test_a_cooling_key_is_skipped_and_recovers(client: redis.Redis, unique: str) -> None:
    pool = make_pool(client, unique, "a,b", cooldown_min_s=0.2)
    first = take(pool)
    pool.release(first, Outcome.COOL, retry_after_s=0.6)
    other = {take(pool).key.id for _ in range(4)}
    assert other == {key_id("b") if first.key.id == key_id("a") else key_id("a")}
    time.sleep(0.65)
    assert {take(pool).key.id for _ in range(4)} == {key_id("a"), key_id("b")}


def test_a_refused_key_is_disabled_until_enabled(client: redis.Redis, unique: str) -> None:
    pool = make_pool(client, unique, "a,b")
    for grant in [take(pool), take(pool)]:
        pool.release(grant, Outcome.AUTH, reason="HTTP 401")
    refused = pool.acquire()
    assert isinstance(refused, Refusal) and (refused.reason, refused.wait_s) == ("disabled", 0)
    states = {k["id"]: (k["state"], k["disabled"]) for k in pool.snapshot()["keys"]}
    assert states == {key_id("a"): ("disabled", "HTTP 401"), key_id("b"): ("disabled", "HTTP 401")}
    assert pool.enable(key_id("b")) and not pool.enable("k-unknown")
    assert {take(pool).key.id for _ in range(3)} == {key_id("b")}


def test_the_cli_shows_the_pool_by_key_id_and_enables_a_key(client: redis.Redis,
                                                            stack: Settings) -> None:
    from pipeline.engines.credentials import PREFIX, build_pool
    from pipeline.settings import load

    secret = "sk-cli-" + os.urandom(6).hex()
    env = dict(os.environ, SONIC_REDIS_DB=str(CRED_REDIS_DB), SONIC_REMOTE_KEYS=f"{secret},other")
    pool = build_pool(load(redis_db=CRED_REDIS_DB, remote_keys=f"{secret},other",
                           remote_strategy="round_robin"), client)
    for name in client.scan_iter(PREFIX + "*"):
        client.delete(name)
    pool.release(take(pool), Outcome.AUTH, reason="HTTP 403")

    def cli(*argv: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "credentials", *argv],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert secret not in proc.stdout + proc.stderr
        return json.loads(proc.stdout)

    shown = cli()
    assert [(k["id"], k["state"]) for k in shown["keys"]] == [
        (key_id(secret), "disabled"), (key_id("other"), "ready")]
    assert shown["keys"][0]["disabled"] == "HTTP 403" and shown["max_concurrent"] == 50
    assert [k["state"] for k in cli("--enable", key_id(secret))["keys"]] == ["ready", "ready"]
    settings = subprocess.run([sys.executable, "-m", "pipeline.cli", "settings"], env=env,
                              capture_output=True, text=True, timeout=60)
    assert secret not in settings.stdout and '"remote_keys": "**********"' in settings.stdout
