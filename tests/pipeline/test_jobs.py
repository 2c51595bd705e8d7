"""The job message schema: the seed shape as it is, optional fields, precise error codes."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from pipeline.errors import CODES, InvalidMessage
from pipeline.jobs import Job, decode, peek_task_id
from tests.pipeline.checks import callback_scheme_check, scheme_check
from pipeline.settings import Settings, load

SEED = {"task_id": "3f6c...", "audio_url": "/uploads/user1/audio.mp3",
        "image_url": "/uploads/user1/avatar.jpg", "duration": 30.5,
        "config": {"min_resolution": 1024, "expand_ratio": 0.18, "inference_steps": 25,
                   "dynamic_scale": 1.1, "motion_scale": 1.05},
        "callback_url": "https://api.example.com/callback"}


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load(max_message_bytes=2048)


def raw(**changes: Any) -> bytes:
    message = dict(SEED, **changes)
    return json.dumps({k: v for k, v in message.items() if v is not ...}).encode()


def rejected(value: bytes, settings: Settings) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as caught:
        decode(value, settings, check_url=scheme_check, check_callback=callback_scheme_check)
    assert caught.value.code in CODES
    return caught.value


def test_the_seed_shape_is_accepted_as_it_is(settings: Settings) -> None:
    job = decode(json.dumps(SEED).encode(), settings)
    assert job.task_id == "3f6c..."
    assert job.duration == 30.5
    assert job.config.min_resolution == 1024 and job.config.motion_scale == 1.05
    assert job.callback_url == "https://api.example.com/callback"
    assert job.priority == 5 and job.depends_on == [] and job.metadata == {}


def test_optional_fields_and_unknown_fields_are_kept(settings: Settings) -> None:
    value = raw(user_id="u1", tenant="acme", priority=0, ordering_key="k",
                depends_on=["a", "b"], deadline="2030-01-01T00:00:00Z", engine="builtin",
                output={"format": "mp4", "fps": 25}, metadata={"trace": "x"},
                config=dict(SEED["config"], extra_knob=3), brand_new={"nested": [1]})
    job = decode(value, settings)
    assert (job.user_id, job.tenant, job.priority, job.ordering_key) == ("u1", "acme", 0, "k")
    assert job.depends_on == ["a", "b"] and job.engine == "builtin"
    assert job.output is not None and job.output.fps == 25
    assert job.model_extra == {"brand_new": {"nested": [1]}}
    assert job.config.model_extra == {"extra_knob": 3}
    assert job.deadline_at(None) == datetime(2030, 1, 1, tzinfo=timezone.utc)


def test_ttl_counts_from_the_record_timestamp(settings: Settings) -> None:
    job = decode(raw(ttl_s=60), settings)
    assert job.deadline_at(1_700_000_000_000) == datetime.fromtimestamp(1_700_000_060,
                                                                        timezone.utc)


@pytest.mark.parametrize("value", [b"not json", b"[1, 2]", b'"a string"', b"\xff\xfe", b""])
def test_not_a_json_object_is_invalid_json(value: bytes, settings: Settings) -> None:
    error = rejected(value, settings)
    assert error.code == "message.invalid_json"
    assert error.task_id is None


def test_a_tombstone_is_invalid_json(settings: Settings) -> None:
    assert rejected(None, settings).code == "message.invalid_json"  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["task_id", "audio_url", "image_url"])
def test_a_missing_required_field_is_named(field: str, settings: Settings) -> None:
    error = rejected(raw(**{field: ...}), settings)
    assert error.code == "message.missing_field"
    assert field in error.message
    assert error.task_id == (None if field == "task_id" else "3f6c...")


@pytest.mark.parametrize("changes", [
    {"duration": "long"}, {"priority": 10}, {"priority": -1}, {"config": 5},
    {"config": {"inference_steps": "many"}}, {"depends_on": "a"}, {"task_id": 42},
    {"task_id": "has space"}, {"task_id": "x" * 129}, {"deadline": "tomorrow"},
    {"metadata": [1]}, {"duration": float("nan")},
])
def test_a_wrong_type_is_wrong_type(changes: dict[str, Any], settings: Settings) -> None:
    error = rejected(raw(**changes), settings)
    assert error.code == "message.wrong_type"
    assert error.message.startswith("field ")


def test_too_large_is_rejected_before_parsing(settings: Settings) -> None:
    error = rejected(raw(metadata={"blob": "x" * 4096}), settings)
    assert error.code == "message.too_large"
    assert "SONIC_MAX_MESSAGE_BYTES" in error.message
    assert error.task_id == "3f6c..."


@pytest.mark.parametrize("changes", [
    {"audio_url": "ftp://example.com/a.mp3"}, {"image_url": "gopher://x/y"},
    {"callback_url": "file:///etc/passwd"},
])
def test_a_forbidden_scheme_is_forbidden_url(changes: dict[str, Any], settings: Settings) -> None:
    error = rejected(raw(**changes), settings)
    assert error.code == "input.forbidden_url"
    assert error.task_id == "3f6c..."


def test_the_inputs_module_check_is_used_when_present(settings: Settings) -> None:
    pytest.importorskip("pipeline.inputs")
    with pytest.raises(InvalidMessage) as caught:
        decode(raw(audio_url="/etc/passwd"), settings)  # outside SONIC_INPUT_ROOTS
    assert caught.value.code == "input.forbidden_url"


def test_missing_outranks_wrong_type(settings: Settings) -> None:
    assert rejected(raw(audio_url=..., duration="x"), settings).code == "message.missing_field"


def test_peek_task_id_reads_only_plausible_ids() -> None:
    assert peek_task_id(b'{"task_id": "abc"}') == "abc"
    assert peek_task_id(b'{"task_id": 5}') is None
    assert peek_task_id(b'{"task_id": "a b"}') is None
    assert peek_task_id(b"[]") is None
    assert peek_task_id(b"{") is None


def test_the_model_round_trips_to_json() -> None:
    job = Job.model_validate(SEED)
    assert json.loads(job.model_dump_json(exclude_unset=True)) == SEED
