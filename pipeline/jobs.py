"""The job message upstream services publish, validated at the door.

:func:`decode` turns a Kafka record's value into a :class:`Job` or raises
:class:`~pipeline.errors.InvalidMessage` with a stable code:

    message.too_large      the value exceeds ``settings.max_message_bytes``
    message.invalid_json   not JSON, or not a JSON object
    message.missing_field  a required field is absent (or ``null``)
    message.wrong_type     a field has the wrong type or an invalid value
    message.out_of_range   a number outside its documented range (:mod:`pipeline.job_limits`)
    input.forbidden_url    an input or callback URL has a scheme that is not allowed

The seed article's shape is accepted as it is; unknown fields are kept (``extra``) and
stored with the rest of the payload. A leading UTF-8 byte order mark is ignored. An
explicit ``null`` for an optional field, or for any ``config`` knob, means absent: the
stored payload and config never hold one, so stages read only validated values.
Numbers are strict: ``true``/``false`` and strings are not numbers, and an integer field
takes only a JSON integer (``25``, not ``25.0`` or ``1e9``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StringConstraints,
                      ValidationError, model_validator)

from pipeline import job_limits as limits
from pipeline.errors import InputError, InvalidMessage
from pipeline.inputs import check_callback_url, check_url
from pipeline.job_ids import TASK_ID_MAX, TASK_ID_PATTERN, peek_task_id, strip_bom
from pipeline.job_limits import PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN
from pipeline.settings import Settings

__all__ = ["Job", "JobConfig", "OutputSpec", "decode", "peek_task_id", "TASK_ID_PATTERN",
           "PRIORITY_MIN", "PRIORITY_MAX", "PRIORITY_DEFAULT"]

TaskId = Annotated[str, StringConstraints(pattern=TASK_ID_PATTERN, max_length=TASK_ID_MAX)]
Url = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
Name = Annotated[str, StringConstraints(max_length=128)]

#: NaN/Infinity written out as such: PostgreSQL's JSONB refuses them, so such a message
#: is rejected (``message.invalid_json``) instead of having them silently become null.
_MODEL = dict(allow_inf_nan=False, ser_json_inf_nan="constants")


class _NullIsAbsent(BaseModel):
    """An explicit ``null`` for a declared field means the field is absent."""

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None or k not in cls.model_fields}
        return data


class JobConfig(_NullIsAbsent):
    """Render knobs (Sonic's names); unknown knobs are kept for the engine, null ones dropped."""

    model_config = ConfigDict(extra="allow", **_MODEL)  # type: ignore[typeddict-item]

    min_resolution: StrictInt | None = limits.MIN_RESOLUTION.field()
    expand_ratio: StrictFloat | None = limits.EXPAND_RATIO.field()
    inference_steps: StrictInt | None = limits.INFERENCE_STEPS.field()
    dynamic_scale: StrictFloat | None = limits.DYNAMIC_SCALE.field()
    motion_scale: StrictFloat | None = limits.MOTION_SCALE.field()
    seed: StrictInt | None = limits.SEED.field()

    @model_validator(mode="before")
    @classmethod
    def _drop_null_knobs(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class OutputSpec(_NullIsAbsent):
    model_config = ConfigDict(extra="allow", **_MODEL)  # type: ignore[typeddict-item]

    format: str | None = Field(None, max_length=16)
    fps: StrictFloat | None = limits.OUTPUT_FPS.field()


class Job(_NullIsAbsent):
    """One generation job. Required: ``task_id``, ``audio_url``, ``image_url``."""

    model_config = ConfigDict(extra="allow", **_MODEL)  # type: ignore[typeddict-item]

    task_id: TaskId
    audio_url: Url
    image_url: Url
    duration: StrictFloat | None = limits.DURATION_S.field()
    config: JobConfig = Field(default_factory=JobConfig)
    callback_url: Url | None = None
    user_id: Name | None = None
    tenant: Name | None = None
    priority: StrictInt = limits.PRIORITY.field(PRIORITY_DEFAULT)
    ordering_key: Annotated[str, StringConstraints(max_length=1024)] | None = None
    depends_on: list[TaskId] = Field(default_factory=list, max_length=1000)
    deadline: datetime | None = None
    ttl_s: StrictFloat | None = limits.TTL_S.field()
    engine: Annotated[str, StringConstraints(max_length=64)] | None = None
    output: OutputSpec | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def deadline_at(self, produced_ms: int | None) -> datetime | None:
        """``deadline``, else ``ttl_s`` after the record was produced (stable on redelivery)."""
        if self.deadline is not None:
            if self.deadline.tzinfo is None:
                return self.deadline.replace(tzinfo=timezone.utc)
            return self.deadline
        if self.ttl_s is None:
            return None
        base = (datetime.fromtimestamp(produced_ms / 1000, timezone.utc) if produced_ms
                else datetime.now(timezone.utc))
        return base + timedelta(seconds=self.ttl_s)

    def payload_json(self) -> str:
        """The message as admitted, for ``tasks.payload``: validated values, unknown fields
        kept, no ``null`` for an optional field."""
        return self.model_dump_json(exclude_unset=True)

    def config_json(self) -> str:
        """The render knobs given, for ``tasks.config`` (never a ``null`` knob)."""
        return self.config.model_dump_json(exclude_unset=True)


#: ``check(url, settings)``: raises InputError (``input.forbidden_url``) for a URL not allowed.
UrlCheck = Callable[[str, Settings], object]


def default_checks() -> tuple[UrlCheck, UrlCheck]:
    """``pipeline.inputs``' admission checks (pure, no network I/O)."""
    return check_url, check_callback_url


def check_engine(name: str, settings: Settings, task_id: str | None = None) -> None:
    """Refuse an engine no worker knows (``message.out_of_range``, naming the known ones):
    at the door, not after preprocess has run. The benchmark engine counts only while
    ``SONIC_BENCH_ENGINE`` is on, as for the workers."""
    from pipeline.engines import BENCH_ENGINES, ENGINES

    known = sorted(ENGINES) + (sorted(BENCH_ENGINES) if settings.bench_engine else [])
    if name not in known:
        raise InvalidMessage(f"field 'engine' is out of range: {name[:64]!r} given, expected "
                             f"one of {', '.join(known)}", code="message.out_of_range",
                             task_id=task_id)


def decode(value: bytes | None, settings: Settings, *, check_url: UrlCheck | None = None,
           check_callback: UrlCheck | None = None) -> Job:
    """Validate one record value; raise :class:`InvalidMessage` with a precise code."""
    if value is None:
        raise InvalidMessage("the message has no value (a tombstone)", code="message.invalid_json")
    if len(value) > settings.max_message_bytes:
        raise InvalidMessage(
            f"the message is {len(value)} bytes, over SONIC_MAX_MESSAGE_BYTES="
            f"{settings.max_message_bytes}; send media by reference",
            code="message.too_large", task_id=peek_task_id(value))
    try:
        job = Job.model_validate_json(strip_bom(value))
    except ValidationError as exc:
        raise invalid_message(exc, value) from None
    if job.duration is not None and job.duration > settings.max_audio_s:
        raise InvalidMessage(
            f"field 'duration' is out of range: {_show(job.duration)} given, expected a "
            f"number from 0 to SONIC_MAX_AUDIO_S={limits.show_number(settings.max_audio_s)}",
            code="message.out_of_range", task_id=job.task_id)
    if job.engine:  # "" is the default engine, as for the workers
        check_engine(job.engine, settings, job.task_id)
    if check_url is None or check_callback is None:
        check_url, check_callback = default_checks()
    try:
        check_url(job.audio_url, settings)
        check_url(job.image_url, settings)
        if job.callback_url is not None:
            check_callback(job.callback_url, settings)
    except InputError as exc:
        raise InvalidMessage(exc.message, code=exc.code, task_id=job.task_id) from None
    return job


_RANK = {"message.invalid_json": 0, "message.missing_field": 1, "message.wrong_type": 2,
         "message.out_of_range": 3}
_OUT_OF_RANGE = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_HINTS = {
    "int_type": "must be an integer: a JSON number without a fraction or exponent "
                "(not true/false, a string, 25.0 or 1e9)",
    "float_type": "must be a number (not true/false or a string)",
    "finite_number": "must be a finite number",
    "string_pattern_mismatch": f"must be 1 to {TASK_ID_MAX} ASCII letters, digits and ._:- "
                               "not starting with '.'",
}


def invalid_message(exc: ValidationError, value: bytes | None = None,
                    prefix: str = "") -> InvalidMessage:
    """The one error reported for a failed validation: the most basic problem first
    (invalid JSON, then missing, wrong type, out of range), naming the field and, for a
    range, the documented bounds. ``prefix`` is the path of the validated part
    (``"config"``); ``value`` the raw message, for its task id."""
    found: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False):
        kind, loc = error["type"], error["loc"]
        where = ".".join(str(part) for part in (prefix, *loc) if part != "")
        if kind == "json_invalid" or (kind == "model_type" and not loc):
            found.append(("message.invalid_json", f"the value is not a JSON object: {error['msg']}"))
        elif kind == "missing":
            found.append(("message.missing_field", f"field {where!r} is required"))
        elif kind in _OUT_OF_RANGE:
            bounds = limits.RANGES.get(where)
            expected = bounds.describe() if bounds is not None else error["msg"]
            found.append(("message.out_of_range", f"field {where!r} is out of range: "
                          f"{_show(error.get('input'))} given, expected {expected}"))
        else:
            hint = _TYPE_HINTS.get(kind, error["msg"])
            found.append(("message.wrong_type", f"field {where!r}: {hint}"))
    code, message = min(found, key=lambda item: _RANK[item[0]])
    return InvalidMessage(message, code=code, task_id=peek_task_id(value))



def _show(number: object) -> str:
    """A number for an error message, at most 40 characters."""
    text = repr(number)
    return text if len(text) <= 40 else text[:37] + "..."
