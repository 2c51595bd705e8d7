"""The remote engine's API keys, read from ``SONIC_REMOTE_KEYS`` (a secret).

Two forms:

    key-one,key-two,key-three
    [{"key": "key-one", "weight": 3, "rate": "10/second;600/minute"}, {"key": "key-two"}]

``weight`` (an integer, default 1) is the key's share under the ``weighted`` strategy;
``rate`` its own limits in ``limits`` notation (``;`` between limits), default
``SONIC_REMOTE_RATE``. A key is known everywhere else (Redis, metrics, logs, the CLI) by
its id, ``k`` and the first 10 hex digits of its SHA-256, never by its value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from limits import parse_many
from pydantic import SecretStr

from pipeline.errors import ConfigError

#: Milliseconds added to every window: the pool spaces its calls a little wider than the
#: service counts them, so a call that reaches the service a few ms late (scheduling,
#: the network) still lands in a window with room.
WINDOW_GUARD_MS = 100


@dataclass(frozen=True)
class Window:
    """At most ``amount`` calls in any ``span_ms`` (the limit's window plus the guard)."""

    amount: int
    span_ms: int


@dataclass(frozen=True)
class KeySpec:
    id: str
    secret: SecretStr = field(repr=False)
    weight: int = 1
    windows: tuple[Window, ...] = ()
    rate: str = ""


def key_id(secret: str) -> str:
    """``k`` + 10 hex digits of SHA-256: names a key without revealing it."""
    return "k" + hashlib.sha256(secret.encode()).hexdigest()[:10]


def windows(rate: str) -> tuple[Window, ...]:
    """``"5/second;120/minute"`` -> the windows; ``config.invalid`` if it does not parse."""
    try:
        items = parse_many(rate)
    except ValueError:
        raise ConfigError(f"SONIC_REMOTE_RATE: not a rate such as '5/second;120/minute': "
                          f"{rate!r}") from None
    return tuple(Window(int(i.amount), int(i.get_expiry()) * 1000 + WINDOW_GUARD_MS)
                 for i in items)


def parse_keys(value: SecretStr | None, default_rate: str) -> list[KeySpec]:
    """The keys of ``SONIC_REMOTE_KEYS``, in order, duplicates dropped. Raises
    ``ConfigError`` (never quoting a key) for a malformed value; an empty list when unset."""
    text = value.get_secret_value().strip() if value is not None else ""
    if not text:
        return []
    if text.startswith("["):
        try:
            entries = json.loads(text)
        except ValueError:
            raise ConfigError("SONIC_REMOTE_KEYS is not valid JSON") from None
    else:
        entries = [{"key": part.strip()} for part in text.split(",") if part.strip()]
    specs: dict[str, KeySpec] = {}
    for index, entry in enumerate(entries):
        entry = {"key": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict):
            entry = {}
        secret, weight = entry.get("key"), entry.get("weight", 1)
        if not isinstance(secret, str) or not secret or type(weight) is not int or weight < 1:
            raise ConfigError(f"SONIC_REMOTE_KEYS entry {index}: needs a non-empty 'key' and "
                              "an integer 'weight' of at least 1")
        rate = entry.get("rate") or default_rate
        spec = KeySpec(key_id(secret), SecretStr(secret), weight, windows(rate), rate)
        specs.setdefault(spec.id, spec)
    return list(specs.values())
