"""Callback flow control against real Redis and real local HTTP receivers.

Each test builds its flow the way an io worker does (``flow.build(settings)``: Redis at the
settings' location); two flows built apart share nothing but Redis, like two workers.
"""

from __future__ import annotations

import base64
import multiprocessing
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from pipeline.errors import CallbackPaused, CallbackRetry, PermanentError
from pipeline.inputs.urls import check_callback_url
from pipeline.settings import Settings, load
from pipeline.webhooks import build_payload, deliver, message_id
from pipeline.webhooks.flow import PREFIX, FlowControl, build, destination
from tests.support.server import free_port
from tests.support.receiver import CallbackReceiver, Received, Reply
from tests.support.trickle import TrickleServer

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"flow control test key..").decode()
#: Redis database of these tests (their keys are removed afterwards).
FLOW_REDIS_DB = 3
FAILURES, OPEN_S = 3, 2.0


def flow_settings(**extra: Any) -> Settings:
    base: dict[str, Any] = dict(
        redis_db=FLOW_REDIS_DB, webhook_secret=SECRET, webhook_timeout_s=0.3,
        allow_private_networks=True, webhook_breaker_failures=FAILURES,
        webhook_breaker_open_s=OPEN_S, webhook_breaker_trials=1, webhook_rate="1000/second")
    return load(**{**base, **extra})


@pytest.fixture
def flows(stack: Settings) -> Iterator[Callable[..., FlowControl]]:
    """Flows on the real Redis; every key they made is removed at the end."""
    yield lambda **extra: build(flow_settings(**extra))
    client = redis.Redis(host=stack.redis_host, port=stack.redis_port, db=FLOW_REDIS_DB)
    for key in client.scan_iter(f"{PREFIX}*"):
        client.delete(key)


class Counted:
    """One delivery to ``url`` as the callback stage makes it, counting the requests."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url, self.settings, self.calls = url, settings, 0
        self.host = destination(check_callback_url(url, settings))

    def __call__(self) -> Any:
        self.calls += 1
        return deliver(self.url, build_payload("t", "completed"), message_id("t", "completed"),
                       self.settings, attempt=self.calls)

    def send(self, flow: FlowControl) -> str:
        try:
            flow.send(self.host, self)
            return "delivered"
        except CallbackPaused as exc:
            return f"paused:{exc.detail['reason']}"
        except (CallbackRetry, PermanentError) as exc:
            return exc.code


class Stamped(CallbackReceiver):
    """A receiver that notes when each request arrived (monotonic seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrived: list[float] = []

    def record(self, received: Received) -> Reply:
        self.arrived.append(time.monotonic())
        return super().record(received)


def _dead(kind: str) -> Any:
    """A receiver that is down in one way: its context manager gives its URL."""
    if kind == "refused":
        port = free_port()  # nothing listens there

        class Refusing:
            def __enter__(self) -> str:
                return f"http://127.0.0.1:{port}/hook"

            def __exit__(self, *exc: object) -> None:
                pass
        return Refusing()
    if kind == "timeout":
        server = TrickleServer("silent")

        class Silent:
            def __enter__(self) -> str:
                return server.__enter__().url("/hook")

            def __exit__(self, *exc: object) -> None:
                server.__exit__(None, None, None)
        return Silent()
    status = int(kind)
    receiver = CallbackReceiver(SECRET, [Reply(status)] * 100)

    class Failing:
        def __enter__(self) -> str:
            return receiver.start().url("/hook")

        def __exit__(self, *exc: object) -> None:
            receiver.stop()
    return Failing()


@pytest.mark.parametrize("kind", ["refused", "timeout", "503", "500", "429"])
def test_a_dead_receiver_opens_its_breaker_for_every_worker_and_gets_one_trial_later(
        flows: Callable[..., FlowControl], kind: str) -> None:
    """Given a receiver that is down, when N deliveries to it fail, then its breaker is open
    for every worker: their deliveries are delayed by the open time without a request;
    once it is over, exactly one trial goes out, and its failure opens it again."""
    worker_a, worker_b = flows(), flows()
    settings = flow_settings()
    with _dead(kind) as url:
        hook = Counted(url, settings)
        assert [hook.send(worker_a) for _ in range(FAILURES)] == ["callback.retry"] * FAILURES
        assert worker_b.breakers.state(hook.host) == "open"
        held = []
        for worker in (worker_a, worker_b) * 5:
            with pytest.raises(CallbackPaused) as exc:
                worker.send(hook.host, hook)
            held.append(exc.value.detail)
        assert hook.calls == FAILURES  # no request while open
        assert all(d["reason"] == "breaker_open" and 0 < d["delay_s"] <= OPEN_S * 1.1 + 0.01
                   for d in held)

        time.sleep(max(d["delay_s"] for d in held))  # the longest delay given, jitter included
        outcomes = [hook.send(w) for w in (worker_b, worker_a, worker_b)]
    assert outcomes == ["callback.retry", "paused:breaker_open", "paused:breaker_open"]
    assert hook.calls == FAILURES + 1 and worker_a.breakers.state(hook.host) == "open"


@pytest.mark.parametrize("status", [503, 429])
def test_an_open_breaker_half_opens_after_the_open_time_and_a_success_closes_it(
        flows: Callable[..., FlowControl], status: int) -> None:
    worker_a, worker_b = flows(), flows()
    with CallbackReceiver(SECRET, [Reply(status)] * FAILURES) as receiver:
        hook = Counted(receiver.url("/hook"), flow_settings())
        for _ in range(FAILURES):
            hook.send(worker_a)
        assert hook.send(worker_b) == "paused:breaker_open"
        time.sleep(OPEN_S + 0.05)  # the receiver is back (its script is spent)
        assert hook.send(worker_b) == "delivered"  # the trial
        assert worker_a.breakers.state(hook.host) == "closed"
        assert [hook.send(w) for w in (worker_a, worker_b) * 5] == ["delivered"] * 10
    assert len(receiver.requests) == hook.calls == FAILURES + 11
    assert all(r.verified for r in receiver.requests)


def test_an_answer_from_a_live_receiver_keeps_the_breaker_closed(
        flows: Callable[..., FlowControl]) -> None:
    worker = flows()
    script = [Reply(s) for s in (400, 404, 410, 422, 408, 425)] * 3
    with CallbackReceiver(SECRET, script) as receiver:
        hook = Counted(receiver.url("/hook"), flow_settings())
        outcomes = [hook.send(worker) for _ in range(len(script))]
    assert "paused:breaker_open" not in outcomes and hook.calls == len(script)
    assert worker.breakers.state(hook.host) == "closed"


def test_while_one_receiver_is_down_another_keeps_its_latency(
        flows: Callable[..., FlowControl]) -> None:
    """p50 of deliveries to a healthy receiver, before and while another receiver's breaker
    is open and a second worker keeps sending to that dead receiver."""
    measured, hammer = flows(), flows()
    settings = flow_settings(webhook_timeout_s=1.0)
    with CallbackReceiver(SECRET) as healthy, TrickleServer("silent") as dead_server:
        good, dead = (Counted(u, settings) for u in (healthy.url("/h"), dead_server.url("/d")))

        def timed(hook: Counted, flow: FlowControl) -> tuple[float, str]:
            started = time.perf_counter()
            result = hook.send(flow)
            return time.perf_counter() - started, result

        for _ in range(5):  # warm up connections and scripts
            timed(good, measured)
        before = [timed(good, measured) for _ in range(40)]
        opened = [timed(dead, hammer) for _ in range(FAILURES)]

        stop, held = threading.Event(), []

        def keep_sending() -> None:
            while not stop.is_set():
                held.append(timed(dead, hammer))
                time.sleep(0.005)

        thread = threading.Thread(target=keep_sending)
        thread.start()
        try:
            during = [timed(good, measured) for _ in range(40)]
        finally:
            stop.set()
            thread.join()
    p50_before = statistics.median(t for t, _ in before)
    p50_during = statistics.median(t for t, _ in during)
    p50_held = statistics.median(t for t, _ in held)
    print(f"\nhealthy p50 before {p50_before * 1000:.1f} ms, during {p50_during * 1000:.1f} ms;"
          f" dead: {len(opened)} timeouts of {statistics.median(t for t, _ in opened):.2f} s,"
          f" then {len(held)} held back, p50 {p50_held * 1000:.2f} ms")
    assert {r for _, r in before + during} == {"delivered"}
    assert [r for _, r in opened] == ["callback.retry"] * FAILURES
    assert {r for _, r in held} == {"paused:breaker_open"} and len(held) >= 20
    assert dead.calls == FAILURES
    assert p50_during <= 2 * p50_before + 0.003
    assert p50_held < 0.02  # a refusal costs a few Redis round trips, not a timeout


def _sender(redis_port: int, url: str, prefix: str, count: int, start: Any,
            out: Any) -> None:
    """One io worker process: deliver ``count`` callbacks, each until it went out."""
    settings = flow_settings(redis_port=redis_port, webhook_rate="10/second",
                             webhook_timeout_s=2.0)
    flow = build(settings)
    host = destination(check_callback_url(url, settings))
    start.wait(30)
    paused = 0
    for i in range(count):
        task = f"{prefix}-{i}"
        while True:
            try:
                flow.send(host, lambda: deliver(url, build_payload(task, "completed"),
                                                message_id(task, "completed"), settings))
                break
            except CallbackPaused as exc:
                assert exc.detail["reason"] == "rate_limited"
                paused += 1
                time.sleep(exc.detail["delay_s"])
    out.put((prefix, paused))


def test_the_rate_limit_holds_across_two_worker_processes_and_drops_nothing(
        flows: Callable[..., FlowControl], stack: Settings) -> None:
    """Two processes send 25 callbacks each to one receiver at 10/second: no one-second
    window at the receiver holds more than 10, the excess is delayed, all 50 arrive."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    with Stamped(SECRET) as receiver:
        url = receiver.url("/rate")
        procs = [ctx.Process(target=_sender, args=(stack.redis_port, url, name, 25, start, out))
                 for name in ("a", "b")]
        for proc in procs:
            proc.start()
        time.sleep(2.0)  # both imported and connected
        began = time.monotonic()
        start.set()
        results = dict(out.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(timeout=10)
        elapsed = time.monotonic() - began
    tasks = [r.payload["task_id"] for r in receiver.requests]
    assert sorted(tasks) == sorted(f"{p}-{i}" for p in "ab" for i in range(25))
    assert all(r.verified for r in receiver.requests)
    arrived = sorted(receiver.arrived)
    # The limiter grants at decision time; a request reaches the receiver up to a delivery's
    # latency later (tens of ms on a loaded 2-core box), so arrivals are counted in windows
    # 100 ms shorter than the limiter's.
    busiest = max(sum(1 for t in arrived[i:] if t < start_t + 0.9)
                  for i, start_t in enumerate(arrived))
    print(f"\n50 callbacks in {elapsed:.2f} s from two processes at 10/second; busiest "
          f"one-second window {busiest}; held back {results}")
    assert busiest <= 10
    assert results["a"] > 0 and results["b"] > 0  # each process had its excess delayed
    assert elapsed >= 4.0  # 50 at 10 per second: the last window opens after 4 s
