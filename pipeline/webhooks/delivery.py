"""One signed callback POST and what its answer means.

    2xx                                   -> DeliveryResult(outcome="delivered")
    timeout, refused, DNS, 408/425/429/5xx -> CallbackRetry (retry_after when the receiver set one)
    3xx and other 4xx                     -> PermanentError callback.rejected
    URL or address not allowed            -> InputError input.forbidden_url

Every attempt of a callback carries the same ``webhook-id`` and a fresh timestamp.
``SONIC_WEBHOOK_TIMEOUT_S`` bounds the whole attempt (DNS, connect, TLS, request, status
line and headers; see :mod:`.transport`): a receiver that answers slowly, a byte at a
time or never is a timeout, retried like any other.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from pipeline.errors import CallbackRetry, InputError, PermanentError, TransportError
from pipeline.inputs.urls import check_callback_url, redact
from pipeline.settings import Settings

from . import transport
from .payload import encode
from .signing import headers as signed_headers

RETRYABLE = (408, 425, 429)


@dataclass(frozen=True)
class DeliveryResult:
    status_code: int
    #: Seconds from the request to the answer.
    duration: float
    outcome: str
    attempt: int


def deliver(
    url: str,
    payload: Mapping[str, Any],
    msg_id: str,
    settings: Settings,
    attempt: int = 1,
    now: float | None = None,
) -> DeliveryResult:
    """POST ``payload`` to ``url``, signed with ``settings.webhook_secret``.

    Returns within ``settings.webhook_timeout_s`` seconds (plus a few milliseconds).
    Raises ``CallbackRetry`` (timeouts, connection failures, 408/425/429/5xx; ``detail``
    has ``timeout``, ``status_code``, ``retry_after``), ``PermanentError``
    ``callback.rejected`` (3xx, other 4xx) or ``InputError`` ``input.forbidden_url``.
    """
    ref = check_callback_url(url, settings)
    body = encode(payload)
    timestamp = int(time.time() if now is None else now)
    sent = {"Content-Type": "application/json",
            **signed_headers(settings.webhook_secret.get_secret_value(), msg_id, timestamp, body)}
    where = redact(url)
    started = time.monotonic()
    try:
        answer = transport.post(ref, body, sent, allow_private=settings.allow_private_networks,
                                deadline_s=settings.webhook_timeout_s)
    except transport.Unanswered as exc:
        raise CallbackRetry(str(exc), attempt=attempt, timeout=exc.timeout,
                            duration_s=round(time.monotonic() - started, 3)) from None
    except (TransportError, InputError) as exc:
        if isinstance(exc, InputError) and exc.code == "input.forbidden_url":
            raise
        raise CallbackRetry(f"callback to {where}: {exc.message}", attempt=attempt) from None
    duration = time.monotonic() - started
    status = answer.status
    if 200 <= status < 300:
        return DeliveryResult(status, duration, "delivered", attempt)
    said = _excerpt(answer.body)
    if status in RETRYABLE or status >= 500:
        raise CallbackRetry(f"callback to {where} answered HTTP {status}", attempt=attempt,
                            status_code=status, body=said,
                            retry_after=parse_retry_after(answer.retry_after))
    raise PermanentError(f"callback to {where} answered HTTP {status}", code="callback.rejected",
                         attempt=attempt, status_code=status, body=said)


def _excerpt(body: bytes, limit: int = 200) -> str:
    """The start of the receiver's answer, as text, for the delivery event."""
    return bytes(body[:limit]).decode("utf-8", errors="replace")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
