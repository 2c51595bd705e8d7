"""The callbacks' flow-control policy with in-memory storages: what counts as a failure,
when the breaker opens, half-opens and closes, how long a held-back delivery waits.

pybreaker takes no clock: "time passes" by moving the storage's opening time back, which
its public ``opened_at`` setter allows. ``limits`` counts on the real clock (short windows).
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

import pytest
from limits.storage import MemoryStorage
from pybreaker import STATE_CLOSED, CircuitMemoryStorage

from pipeline.errors import (CODES, CallbackPaused, CallbackRetry, InputError, PermanentError,
                             RecoverableError)
from pipeline.inputs.urls import Ref
from pipeline.settings import load
from pipeline.webhooks.breaker import HostBreakers, counts_as_failure
from pipeline.webhooks.flow import FlowControl, build, destination
from pipeline.webhooks.ratelimit import HostRateLimit

HOST = "https://hooks.example.test:443"
OTHER = "https://other.example.test:443"
FAILURES, OPEN_S, ATTEMPT_S = 3, 30.0, 2.0

#: One exception of each kind that shows a receiver down (what deliver() raises).
DOWN = {
    "timeout": lambda: CallbackRetry("no answer within 10 s", timeout=True),
    "refused": lambda: CallbackRetry("cannot connect", timeout=False),
    "dns": lambda: CallbackRetry("callback to x: name does not resolve"),
    "429": lambda: CallbackRetry("HTTP 429", status_code=429, retry_after=None),
    "500": lambda: CallbackRetry("HTTP 500", status_code=500),
    "503": lambda: CallbackRetry("HTTP 503", status_code=503),
    "599": lambda: CallbackRetry("HTTP 599", status_code=599),
}
#: Answers that show the receiver up, though the delivery did not succeed.
UP = {
    "400": lambda: PermanentError("HTTP 400", code="callback.rejected", status_code=400),
    "404": lambda: PermanentError("HTTP 404", code="callback.rejected", status_code=404),
    "410": lambda: PermanentError("HTTP 410", code="callback.rejected", status_code=410),
    "302": lambda: PermanentError("HTTP 302", code="callback.rejected", status_code=302),
    "408": lambda: CallbackRetry("HTTP 408", status_code=408),
    "425": lambda: CallbackRetry("HTTP 425", status_code=425),
}


class Memory:
    """pybreaker storages per host, shared by every breaker made for that host."""

    def __init__(self) -> None:
        self.by_host: dict[str, CircuitMemoryStorage] = {}

    def __call__(self, host: str) -> CircuitMemoryStorage:
        return self.by_host.setdefault(host, CircuitMemoryStorage(STATE_CLOSED))

    def age(self, host: str, seconds: float) -> None:
        """Pretend the breaker of ``host`` opened ``seconds`` earlier than it did."""
        storage = self.by_host[host]
        storage.opened_at = storage.opened_at - timedelta(seconds=seconds)


def make_flow(rate: str = "1000/second", trials: int = 1,
              memory: Memory | None = None) -> tuple[FlowControl, Memory]:
    memory = memory or Memory()
    breakers = HostBreakers(memory, MemoryStorage(), failures=FAILURES, open_s=OPEN_S,
                            trials=trials, trial_window_s=2 * ATTEMPT_S + 1)
    flow = FlowControl(breakers, HostRateLimit(MemoryStorage(), rate),
                       attempt_s=ATTEMPT_S, rng=random.Random(3))
    return flow, memory


class Receiver:
    """fn() for FlowControl.send: raises the scripted exceptions in turn, then "ok"."""

    def __init__(self, *script: Any) -> None:
        self.script, self.calls = list(script), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.script:
            raise self.script.pop(0)()
        return "ok"


def outcome(flow: FlowControl, host: str, receiver: Receiver) -> str:
    try:
        return flow.send(host, receiver)
    except CallbackPaused as exc:
        return f"paused:{exc.detail['reason']}"
    except (CallbackRetry, PermanentError) as exc:
        return exc.code


def test_only_signs_of_a_receiver_down_count_as_failures() -> None:
    assert all(counts_as_failure(make()) for make in DOWN.values())
    assert not any(counts_as_failure(make()) for make in UP.values())
    others = [InputError("forbidden", code="input.forbidden_url"), ValueError("bug"),
              RecoverableError("x"), CallbackPaused("held", reason="rate_limited")]
    assert not any(counts_as_failure(exc) for exc in others)


@pytest.mark.parametrize("kind", sorted(DOWN))
def test_the_breaker_opens_after_consecutive_failures_and_then_sends_nothing(kind: str) -> None:
    flow, _ = make_flow()
    dead = Receiver(*[DOWN[kind]] * 10)
    assert [outcome(flow, HOST, dead) for _ in range(FAILURES)] == ["callback.retry"] * FAILURES
    assert flow.breakers.state(HOST) == "open"
    held = []
    for _ in range(5):
        with pytest.raises(CallbackPaused) as exc:
            flow.send(HOST, dead)
        held.append(exc.value)
    assert dead.calls == FAILURES  # no request while open
    assert {e.code for e in held} == {"callback.paused"} and "callback.paused" in CODES
    assert all(e.retryable and e.detail["reason"] == "breaker_open" for e in held)
    assert all(e.detail["host"] == HOST for e in held)
    # The delay is the open time left, plus at most 10 % of it as jitter.
    assert all(OPEN_S - 1 <= e.detail["delay_s"] <= OPEN_S * 1.1 + 0.01 for e in held)
    # Another destination is not affected.
    healthy = Receiver()
    assert [outcome(flow, OTHER, healthy) for _ in range(5)] == ["ok"] * 5


@pytest.mark.parametrize("kind", sorted(UP))
def test_answers_of_a_receiver_that_is_up_never_open_it_and_reset_the_count(kind: str) -> None:
    flow, _ = make_flow()
    up = Receiver(*[UP[kind]] * 10)
    for _ in range(10):
        outcome(flow, HOST, up)
    assert up.calls == 10 and flow.breakers.state(HOST) == "closed"
    # Failures must be consecutive: an answer from a live receiver in between resets.
    mixed = Receiver(DOWN["503"], DOWN["timeout"], UP[kind], DOWN["503"], DOWN["refused"],
                     lambda: None)
    flow2, _ = make_flow()
    for _ in range(5):
        outcome(flow2, HOST, mixed)
    assert flow2.breakers.state(HOST) == "closed"


def test_half_open_lets_one_trial_through_and_a_success_closes_it() -> None:
    flow, memory = make_flow()
    dead = Receiver(*[DOWN["503"]] * FAILURES)
    for _ in range(FAILURES):
        outcome(flow, HOST, dead)
    memory.age(HOST, OPEN_S - 5)
    with pytest.raises(CallbackPaused) as still:
        flow.send(HOST, dead)
    assert 4 <= still.value.detail["delay_s"] <= 5 * 1.1 + 0.01  # 5 s left
    memory.age(HOST, 5.1)  # the open time is over

    # The first delivery is the trial; while its answer is out, the others wait at most
    # one attempt deadline (they learn the trial's outcome then), not another open time.
    trial_started: list[str] = []

    def trial() -> str:
        trial_started.append(flow.breakers.state(HOST))
        with pytest.raises(CallbackPaused) as second:
            flow.send(HOST, Receiver())
        assert second.value.detail["reason"] == "breaker_open"
        assert second.value.detail["delay_s"] <= ATTEMPT_S * 1.1 + 0.01
        return "ok"

    assert flow.send(HOST, trial) == "ok"
    assert trial_started == ["half-open"]
    assert flow.breakers.state(HOST) == "closed"
    healthy = Receiver()
    assert [outcome(flow, HOST, healthy) for _ in range(5)] == ["ok"] * 5


def test_a_failed_trial_opens_it_again_for_a_whole_open_time() -> None:
    flow, memory = make_flow(trials=2)
    dead = Receiver(*[DOWN["timeout"]] * 10)
    for _ in range(FAILURES):
        outcome(flow, HOST, dead)
    memory.age(HOST, OPEN_S + 0.1)
    assert outcome(flow, HOST, dead) == "callback.retry"  # the trial went out and failed
    assert dead.calls == FAILURES + 1 and flow.breakers.state(HOST) == "open"
    with pytest.raises(CallbackPaused) as exc:
        flow.send(HOST, dead)
    assert exc.value.detail["delay_s"] >= OPEN_S - 1
    # The next opening has its own trial places: two at once (trials=2), not a third.
    memory.age(HOST, OPEN_S + 0.2)  # (another opening time than the first one's)
    assert [flow.breakers.admit(HOST) for _ in range(2)] == [0.0, 0.0]
    assert flow.breakers.state(HOST) == "half-open"
    assert 0.0 < flow.breakers.admit(HOST) <= 2 * ATTEMPT_S + 1
    assert dead.calls == FAILURES + 1


def test_a_trial_whose_worker_died_frees_its_place_after_the_trial_window() -> None:
    memory = Memory()
    breakers = HostBreakers(memory, MemoryStorage(), failures=1, open_s=OPEN_S, trials=1,
                            trial_window_s=1)
    flow = FlowControl(breakers, HostRateLimit(MemoryStorage(), "100/second"), attempt_s=1)
    outcome(flow, HOST, Receiver(DOWN["500"]))
    memory.age(HOST, OPEN_S + 0.1)
    assert breakers.admit(HOST) == 0.0  # taken, and its worker never reports back
    assert outcome(flow, HOST, Receiver()) == "paused:breaker_open"
    time.sleep(1.05)
    assert outcome(flow, HOST, Receiver()) == "ok" and breakers.state(HOST) == "closed"


def test_the_rate_limit_holds_back_the_excess_until_the_window_frees_a_slot() -> None:
    flow, _ = make_flow(rate="5/second")
    receiver = Receiver()
    started = time.time()
    results = [outcome(flow, HOST, receiver) for _ in range(8)]
    assert results == ["ok"] * 5 + ["paused:rate_limited"] * 3 and receiver.calls == 5
    with pytest.raises(CallbackPaused) as exc:
        flow.send(HOST, receiver)
    # Wait: until the first of the five leaves the one-second window, plus jitter of up
    # to one window so that held-back deliveries spread over the next one.
    assert 0.0 < exc.value.detail["delay_s"] <= (started + 1.0 - time.time()) + 1.0 + 0.01
    assert outcome(flow, OTHER, receiver) == "ok"  # one budget per destination
    time.sleep(max(0.0, started + 1.05 - time.time()))
    assert [outcome(flow, HOST, receiver) for _ in range(6)] == ["ok"] * 5 + [
        "paused:rate_limited"]


def test_an_open_breaker_spends_no_rate_budget() -> None:
    flow, _ = make_flow(rate="4/second")
    dead = Receiver(*[DOWN["refused"]] * 3)
    for _ in range(3):
        outcome(flow, HOST, dead)
    for _ in range(20):
        assert outcome(flow, HOST, dead) == "paused:breaker_open"
    assert flow.rate.take(HOST) == 0.0  # the fourth slot of this second is still free


def test_the_destination_is_scheme_host_and_port() -> None:
    assert destination(Ref("https", "https://A.example/x", host="a.example", port=443)) == \
        "https://a.example:443"
    assert destination(Ref("http", "http://[::1]:81/", host="::1", port=81)) == \
        "http://[::1]:81"


def test_without_redis_the_flow_steps_aside_and_delivers() -> None:
    from tests.support.server import free_port

    flow = build(load(redis_port=free_port()))  # nothing listens there
    receiver = Receiver()
    assert flow.send(HOST, receiver) == "ok" and receiver.calls == 1
