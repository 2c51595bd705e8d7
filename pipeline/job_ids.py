"""Task ids: what one may be, and reading one from a message that failed validation.

A task id names a work dir (``<work_dir>/<task_id>``), an object key
(``videos/<task_id>.mp4``) and a row: it is 1 to 128 ASCII letters, digits and ``._:-``,
and does not start with ``.`` (so ``.`` and ``..`` are impossible). Nothing else: no
``/`` or ``\\``, no NUL, no look-alike from another script.

:func:`peek_task_id` reads the id of a rejected message so it gets a ``rejected`` row:
from the JSON when it parses; from the leading JSON object when garbage follows it; else
by a lenient scan of the top-level object's tokens (a truncated message, a stray comma),
which reads a ``"task_id": "..."`` pair only at the top level, and gives up when the
structure cannot be followed (a single quote outside a string) or names two ids.
"""

from __future__ import annotations

import json
import re

#: The documented task-id syntax (ASCII only: ``[A-Za-z0-9]``, never ``\\w``).
TASK_ID_PATTERN = r"^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$"
TASK_ID_MAX = 128
_TASK_ID = re.compile(r"[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}")
#: A leading UTF-8 byte order mark: stripped before parsing (JSON parsers reject it).
BOM = b"\xef\xbb\xbf"

_TOKEN = re.compile(r'"(?:[^"\\\x00-\x1f]|\\.)*"|[{}\[\]:,]|\s+|[^"\'{}\[\]:,\s]+')


def not_a_task_id(value: str) -> str:
    """The message of ``task.invalid_id`` for ``value`` (cut to 140 characters), with the
    rule, for every place that refuses one (CLI verbs, the HTTP service)."""
    return (f"not a task id: {value[:140]!r} (1 to 128 ASCII letters, digits and ._:-, "
            "not starting with '.')")


def is_task_id(value: object) -> bool:
    """True for a string that is a valid task id (see the module docstring)."""
    return isinstance(value, str) and _TASK_ID.fullmatch(value) is not None


def strip_bom(value: bytes) -> bytes:
    """``value`` without a leading UTF-8 BOM."""
    return value[len(BOM):] if value.startswith(BOM) else value


def peek_task_id(value: bytes | None) -> str | None:
    """The task id of a message that failed validation, when one can be read reliably."""
    if not value:
        return None
    text = _text(value)
    data = _object(text)
    if data is None:
        return _scan(text)
    found = data.get("task_id")
    return found if is_task_id(found) else None


def peek_callback_url(value: bytes | None) -> str | None:
    """The ``callback_url`` of a message that failed validation, when the value is a JSON
    object (perhaps with trailing bytes) naming one as a string of 1-4096 characters; the
    caller still checks it is allowed."""
    if not value:
        return None
    data = _object(_text(value))
    found = data.get("callback_url") if data is not None else None
    return found if isinstance(found, str) and 0 < len(found) <= 4096 else None


def _text(value: bytes) -> str:
    return strip_bom(value).decode("utf-8", "replace")


def _object(text: str) -> dict | None:  # type: ignore[type-arg]
    """The JSON object ``text`` holds, or the one at its start when garbage follows it."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return _leading_object(text)
    return data if isinstance(data, dict) else None


def _leading_object(text: str) -> dict | None:  # type: ignore[type-arg]
    """The JSON object at the start of ``text`` when garbage follows it."""
    try:
        data, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _scan(text: str) -> str | None:
    """The top-level ``"task_id": "<id>"`` of broken JSON, read token by token."""
    depth, recent, found = 0, list[str](), set[str | None]()
    pos = len(text) - len(text.lstrip())
    if not text.startswith("{", pos):
        return None
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:  # an unterminated string or a single quote: stop reading
            break
        token, pos = match.group(), match.end()
        if token.isspace():
            continue
        if token in "{[":
            depth += 1
        elif token in "}]":
            depth -= 1
            if depth <= 0:
                break  # the top-level object ended
        elif depth == 1 and token.startswith('"') and recent == ['"task_id"', ":"]:
            found.add(_string(token))
        recent = (recent + [token])[-2:]
    found.discard(None)
    if len(found) != 1:
        return None
    (task_id,) = found
    return task_id if is_task_id(task_id) else None


def _string(token: str) -> str | None:
    try:
        value = json.loads(token)
    except ValueError:
        return None
    return value if isinstance(value, str) else None
