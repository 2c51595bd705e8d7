"""Callbacks: Standard Webhooks signatures, payload order, delivery outcomes, retry policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from pipeline.errors import CODES, CallbackRetry, ImageError, InputError, PermanentError
from pipeline.settings import Settings, load
from pipeline.webhooks import (
    SignatureError,
    backoff_delay,
    build_payload,
    deliver,
    encode,
    headers,
    message_id,
    parse_retry_after,
    retry_delay,
    should_give_up,
    sign,
    verify,
)
from tests.support.receiver import CallbackReceiver, Reply
from tests.support.trickle import TrickleServer

SECRET = "whsec_" + base64.b64encode(b"a test key of 24 bytes..").decode()
NOW = 1_700_000_000


# --- signing ----------------------------------------------------------------------------
def test_sign_matches_an_independent_computation_and_the_published_vector() -> None:
    body = '{"task_id":"t1","status":"completed"}'
    expected = hmac.new(b"a test key of 24 bytes..", f"msg_1.{NOW}.{body}".encode(),
                        hashlib.sha256).digest()
    assert sign(SECRET, "msg_1", NOW, body) == "v1," + base64.b64encode(expected).decode()
    assert sign(SECRET, "msg_1", NOW, body.encode()) == sign(SECRET, "msg_1", NOW, body)
    # The example from the Standard Webhooks specification.
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330, '{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_round_trip_and_what_it_refuses() -> None:
    body = encode(build_payload("t1", "completed", "https://cdn/x.mp4"))
    sent = headers(SECRET, "msg_1", NOW, body)
    assert verify(SECRET, sent, body, now=NOW + 10)["task_id"] == "t1"
    upper = {k.upper(): v for k, v in sent.items()}
    rotated = {**sent, "webhook-signature": "v1,b2xk " + sent["webhook-signature"]}
    assert verify(SECRET, upper, body, now=NOW) and verify(SECRET, rotated, body, now=NOW)

    other = "whsec_" + base64.b64encode(b"another key").decode()
    refused = [
        (SECRET, sent, body.replace(b"t1", b"t2"), NOW),        # tampered body
        (other, sent, body, NOW),                               # wrong secret
        (SECRET, sent, body, NOW + 301),                        # too old
        (SECRET, {**sent, "webhook-id": "msg_2"}, body, NOW),  # id swapped
        (SECRET, {"webhook-id": "msg_1"}, body, NOW),           # headers missing
    ]
    for secret, hdrs, data, now in refused:
        with pytest.raises(SignatureError):
            verify(secret, hdrs, data, now=now)


# --- payload ----------------------------------------------------------------------------
def test_payload_puts_the_seed_fields_first() -> None:
    failed = build_payload("t9", "failed", None, ImageError("no face", code="image.no_face"),
                           timings={"gpu_s": 1.5}, metadata={"user": "u1"})
    assert list(failed) == ["task_id", "status", "video_url", "error", "timings", "metadata"]
    assert failed["error"] == {"code": "image.no_face", "message": "no face"}
    assert encode(failed).startswith(b'{"task_id":"t9","status":"failed","video_url":null,')
    done = build_payload("t9", "completed", "https://cdn/t9.mp4")
    assert done["error"] is None and json.loads(encode(done))["video_url"] == "https://cdn/t9.mp4"


def test_message_id_is_stable_per_task_and_status() -> None:
    assert message_id("t1", "completed") == message_id("t1", "completed")
    assert message_id("t1", "completed") != message_id("t1", "failed") != message_id("t2", "failed")
    assert message_id("t1", "completed").startswith("msg_")


# --- retry policy ------------------------------------------------------------------------
def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0), (500, 60.0)):
        delays = [backoff_delay(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range
    assert retry_delay(1, retry_after=30.0, base=2.0, cap=60.0, rng=rng) == 30.0
    assert retry_delay(1, retry_after=9999.0, base=2.0, cap=60.0, rng=rng) == 60.0


def test_should_give_up_after_max_age() -> None:
    first = datetime(2026, 1, 1, tzinfo=UTC)
    assert not should_give_up(first, first + timedelta(hours=23), 24 * 3600)
    assert should_give_up(first, first + timedelta(hours=24), 24 * 3600)
    assert should_give_up(100.0, 200.0, 100) and not should_give_up(100.0, 199.0, 100)


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    when = datetime.fromtimestamp(NOW + 60, tz=UTC)
    assert parse_retry_after(format_datetime(when, usegmt=True), now=NOW) == 60.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# --- delivery against a real receiver -------------------------------------------------------
@pytest.fixture
def hook_settings() -> Settings:
    return load(webhook_secret=SECRET, webhook_timeout_s=0.5, allow_private_networks=True)


def test_503_twice_then_200_with_one_stable_id(hook_settings: Settings) -> None:
    payload = build_payload("t1", "completed", "https://cdn/t1.mp4", metadata={"k": "v"})
    msg_id = message_id("t1", "completed")
    script = [Reply(503), Reply(503, {"Retry-After": "7"})]
    with CallbackReceiver(SECRET, script) as receiver:
        url = receiver.url("/hook?x=1")
        with pytest.raises(CallbackRetry) as first:
            deliver(url, payload, msg_id, hook_settings, attempt=1)
        with pytest.raises(CallbackRetry) as second:
            deliver(url, payload, msg_id, hook_settings, attempt=2)
        result = deliver(url, payload, msg_id, hook_settings, attempt=3)

    assert first.value.retryable and first.value.code == "callback.retry"
    assert second.value.detail["retry_after"] == 7.0 and second.value.detail["status_code"] == 503
    assert (result.status_code, result.outcome, result.attempt) == (200, "delivered", 3)
    assert [r.verified for r in receiver.requests] == [True, True, True]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {msg_id}
    assert receiver.requests[0].path == "/hook?x=1"
    assert receiver.requests[2].payload == payload
    assert receiver.requests[2].body == encode(payload)


@pytest.mark.parametrize("status", [400, 410, 302])
def test_other_4xx_and_redirects_are_rejected_for_good(hook_settings: Settings,
                                                       status: int) -> None:
    reply = Reply(status, {"Location": "http://127.0.0.1:1/"})
    with CallbackReceiver(SECRET, [reply]) as rx, pytest.raises(PermanentError) as exc:
        deliver(rx.url("/hook"), build_payload("t", "failed"), "msg_x", hook_settings)
    assert exc.value.code == "callback.rejected" and not exc.value.retryable
    assert exc.value.code in CODES and len(rx.requests) == 1


def test_429_timeout_and_refused_connection_are_retried(hook_settings: Settings) -> None:
    with CallbackReceiver(SECRET, [Reply(429), Reply(200, delay=1.5)]) as receiver:
        with pytest.raises(CallbackRetry):
            deliver(receiver.url("/"), build_payload("t", "completed"), "msg_y", hook_settings)
        with pytest.raises(CallbackRetry) as timed_out:
            deliver(receiver.url("/"), build_payload("t", "completed"), "msg_y", hook_settings)
        assert timed_out.value.detail["timeout"] is True
    with pytest.raises(CallbackRetry) as refused:
        deliver(receiver.url("/"), build_payload("t", "completed"), "msg_y", hook_settings)
    assert refused.value.detail["timeout"] is False


def test_a_private_callback_address_is_refused_unless_allowed(hook_settings: Settings) -> None:
    strict = hook_settings.model_copy(update={"allow_private_networks": False})
    with CallbackReceiver(SECRET) as receiver:
        for url in (receiver.url("/"), receiver.url("/", host="localhost"),
                    "file:///etc/passwd"):
            with pytest.raises(InputError) as exc:
                deliver(url, build_payload("t", "completed"), "msg_z", strict)
            assert exc.value.code == "input.forbidden_url"
    assert receiver.requests == []


# --- one deadline per attempt, whatever the receiver does --------------------------------
#: The attempt's deadline in these tests, and how late an attempt may end past it.
DEADLINE_S = 1.0
SLACK_S = 0.5


@pytest.fixture
def trickle_settings() -> Settings:
    return load(webhook_secret=SECRET, webhook_timeout_s=DEADLINE_S,
                allow_private_networks=True)


def _timed(url: str, settings: Settings) -> tuple[float, Any]:
    started = time.monotonic()
    try:
        outcome: Any = deliver(url, build_payload("t", "completed"), "msg_t", settings)
    except (CallbackRetry, PermanentError) as exc:
        outcome = exc
    return time.monotonic() - started, outcome


@pytest.mark.parametrize("shape", ["silent", "deaf", "slow_status", "slow_headers",
                                   "tls_silent"])
def test_a_receiver_that_never_finishes_its_answer_times_out_on_one_deadline(
        trickle_settings: Settings, shape: str) -> None:
    # Each byte comes well within any per-read timeout; only a deadline on the whole
    # attempt ends these.
    with TrickleServer(shape, interval=0.1) as server:
        elapsed, outcome = _timed(server.url("/hook"), trickle_settings)
        hangups = server.wait_hangups(1)
    assert isinstance(outcome, CallbackRetry), outcome
    assert outcome.code == "callback.retry" and outcome.detail["timeout"] is True
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + SLACK_S
    # The connection was closed at the deadline, not left to the receiver.
    assert hangups[0] is not None and hangups[0] < DEADLINE_S + SLACK_S


@pytest.mark.parametrize("shape", ["slow_body", "endless_body"])
def test_a_2xx_counts_as_soon_as_its_headers_are_in(trickle_settings: Settings,
                                                   shape: str) -> None:
    with TrickleServer(shape, interval=0.1) as server:
        elapsed, outcome = _timed(server.url("/hook"), trickle_settings)
        hangups = server.wait_hangups(1)
    assert not isinstance(outcome, Exception), outcome
    assert (outcome.status_code, outcome.outcome) == (200, "delivered")
    assert elapsed < SLACK_S and hangups[0] is not None and hangups[0] < SLACK_S


def test_an_error_whose_body_trickles_keeps_its_status_and_ends_on_time(
        trickle_settings: Settings) -> None:
    with TrickleServer("error_slow_body", interval=0.1) as server:
        elapsed, outcome = _timed(server.url("/hook"), trickle_settings)
    assert isinstance(outcome, CallbackRetry), outcome
    assert outcome.detail["status_code"] == 503 and not outcome.detail.get("timeout")
    assert outcome.detail["body"].startswith("busy")  # what came before the deadline
    assert DEADLINE_S * 0.9 <= elapsed < DEADLINE_S + SLACK_S


def test_the_body_read_after_an_error_is_capped(trickle_settings: Settings) -> None:
    reply = Reply(500, {"X-Why": "x"})
    with CallbackReceiver(SECRET, [reply]) as receiver:
        elapsed, outcome = _timed(receiver.url("/"), trickle_settings)
    assert isinstance(outcome, CallbackRetry) and outcome.detail["status_code"] == 500
    assert outcome.detail["body"] == "" and elapsed < SLACK_S


@pytest.mark.integration
def test_the_callback_stage_gives_up_by_age_and_leaves_the_task_completed(
        db_engine: Engine, unique: str, tmp_path: Path) -> None:
    """Given a completed job whose receiver trickles its headers, when the callback stage
    runs until it gives up, then every attempt ends at the deadline, the callback is
    ``failed`` and the job stays ``completed``."""
    from pipeline.stages import callback
    from pipeline.stages.runner import StageOutcome, run_stage

    # (Every attempt is a request here: the breaker never opens; tests/pipeline/webhooks/.)
    settings = load(webhook_secret=SECRET, webhook_timeout_s=0.5, webhook_max_age_s=2,
                    allow_private_networks=True, work_dir=tmp_path, heartbeat_interval_s=1,
                    webhook_breaker_failures=1000)
    task_id = f"hook-trickle-{unique}"
    with TrickleServer("slow_headers", interval=0.05) as server:
        with db_engine.begin() as conn:
            conn.execute(text("""
                INSERT INTO tasks (task_id, status, stage, payload, callback_url,
                                   received_at, finished_at, result_url)
                VALUES (:t, 'completed', 'callback', '{}', :u, now(), now(), 'https://cdn/x')
            """), {"t": task_id, "u": server.url("/hook")})
        outcomes = []
        for _ in range(20):
            result = run_stage(settings, db_engine, task_id, "callback", callback.run,
                               max_attempts=1_000_000)
            outcomes.append(result.outcome)
            if result.outcome is not StageOutcome.RETRY:
                break
    with db_engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM tasks WHERE task_id = :t"),
                           {"t": task_id}).mappings().one()
        deliveries = [r[0] for r in conn.execute(text(
            "SELECT detail FROM task_events WHERE task_id = :t AND event = 'delivery' "
            "ORDER BY id"), {"t": task_id})]
    assert outcomes[-1] is StageOutcome.CONTINUE and set(outcomes[:-1]) == {StageOutcome.RETRY}
    assert (row["status"], row["callback_status"]) == ("completed", "failed")
    assert row["callback_attempts"] == len(deliveries) >= 3
    assert all(d["code"] == "callback.retry" and d["timeout"] is True for d in deliveries)
    assert all(d["duration_s"] < 0.5 + SLACK_S for d in deliveries)


def test_https_goes_to_the_checked_address_with_sni_and_verifies_the_name(
        hook_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.inputs import addresses
    from tests.support.tls import self_signed

    cert, key = self_signed(tmp_path, "hooks.example.test")
    monkeypatch.setattr(addresses, "resolver",
                        lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    with CallbackReceiver(SECRET, tls=(cert, key)) as receiver:
        url = receiver.url("/hook", host="hooks.example.test")
        with pytest.raises(CallbackRetry) as untrusted:  # self-signed: not trusted
            deliver(url, build_payload("t", "completed"), "msg_s", hook_settings)
        assert "TLS failed" in untrusted.value.message
        assert untrusted.value.detail["timeout"] is False

        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # now trusted, for this name only
        result = deliver(url, build_payload("t", "completed"), "msg_s", hook_settings)
    assert result.outcome == "delivered"
    assert receiver.server_names[-1] == "hooks.example.test"
    assert receiver.requests[-1].headers["host"] == f"hooks.example.test:{receiver.port}"
    assert receiver.requests[-1].verified


def test_an_address_that_refuses_is_skipped_for_the_next_one(
        hook_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.inputs import addresses

    # The receiver listens on 127.0.0.1 only: 127.0.0.2 refuses the connection.
    monkeypatch.setattr(addresses, "resolver", lambda host, port: [
        ipaddress.ip_address("127.0.0.2"), ipaddress.ip_address("127.0.0.1")])
    with CallbackReceiver(SECRET) as receiver:
        result = deliver(receiver.url("/hook", host="hooks.example.test"),
                         build_payload("t", "completed"), "msg_m", hook_settings)
        assert result.outcome == "delivered" and len(receiver.requests) == 1
    assert receiver.requests[0].headers["host"] == f"hooks.example.test:{receiver.port}"
    monkeypatch.setattr(addresses, "resolver",
                        lambda host, port: [ipaddress.ip_address("127.0.0.2")])
    with pytest.raises(CallbackRetry) as refused:
        deliver(receiver.url("/hook", host="hooks.example.test"),
                build_payload("t", "completed"), "msg_m", hook_settings)
    assert refused.value.detail["timeout"] is False
