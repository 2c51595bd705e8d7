"""Signed callbacks (Standard Webhooks): payload, signature, one delivery, retry policy.

    payload = build_payload(task_id, "completed", video_url, timings=..., metadata=...)
    msg_id = message_id(task_id, "completed")        # the same for every retry
    try:
        deliver(callback_url, payload, msg_id, settings, attempt)
    except CallbackRetry as exc:                      # retry after retry_delay(attempt, ...)
        ...                                           # until should_give_up(...)

Flow control per destination (a rate limit and a circuit breaker shared through Redis) is
:mod:`.flow`, not imported here: ``flow_for(settings).send(host, lambda: deliver(...))``.
"""

from __future__ import annotations

from .delivery import DeliveryResult, deliver, parse_retry_after
from .payload import build_payload, encode, message_id
from .retry import backoff_delay, retry_delay, should_give_up
from .signing import SignatureError, headers, sign, verify

__all__ = [
    "DeliveryResult", "SignatureError", "backoff_delay", "build_payload", "deliver", "encode",
    "headers", "message_id", "parse_retry_after", "retry_delay", "should_give_up", "sign",
    "verify",
]
