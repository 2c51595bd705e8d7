"""The job message schema: the seed shape as it is, optional fields, precise error codes."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from pipeline import job_limits
from pipeline.errors import CODES, InvalidMessage
from pipeline.job_ids import is_task_id
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
    {"duration": "long"}, {"priority": "1"}, {"priority": 1.5}, {"config": 5},
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


# --- explicit nulls mean absent --------------------------------------------------------------

OPTIONAL = ["duration", "config", "callback_url", "user_id", "tenant", "priority",
            "ordering_key", "depends_on", "deadline", "ttl_s", "engine", "output", "metadata"]
KNOBS = ["min_resolution", "expand_ratio", "inference_steps", "dynamic_scale", "motion_scale",
         "seed"]


@pytest.mark.parametrize("field", OPTIONAL)
def test_a_null_optional_field_is_absent(field: str, settings: Settings) -> None:
    job = decode(raw(**{field: None}), settings, check_url=scheme_check,
                 check_callback=callback_scheme_check)
    assert field not in job.model_fields_set
    assert field not in json.loads(job.payload_json())
    defaults = Job.model_validate({"task_id": "t", "audio_url": "a", "image_url": "i"})
    assert getattr(job, field) == getattr(defaults, field)


def test_every_null_knob_is_dropped_from_the_stored_config(settings: Settings) -> None:
    config = {knob: None for knob in KNOBS}
    config.update(unknown_knob=None, kept_knob=2)
    job = decode(raw(config=config, output={"fps": None, "format": None}), settings)
    assert json.loads(job.config_json()) == {"kept_knob": 2}
    payload = json.loads(job.payload_json())
    assert payload["config"] == {"kept_knob": 2} and payload["output"] == {}
    assert null_free(payload)


def null_free(value: Any) -> bool:
    if isinstance(value, dict):
        return all(v is not None and null_free(v) for v in value.values())
    if isinstance(value, list):
        return all(null_free(v) for v in value)
    return True


def test_unknown_fields_keep_their_nulls(settings: Settings) -> None:
    job = decode(raw(brand_new=None, metadata={"note": None}), settings)
    payload = json.loads(job.payload_json())
    assert "brand_new" in payload and payload["brand_new"] is None
    assert payload["metadata"] == {"note": None}  # metadata is the sender's own


@pytest.mark.parametrize("field", ["task_id", "audio_url", "image_url"])
def test_a_null_required_field_is_missing(field: str, settings: Settings) -> None:
    assert rejected(raw(**{field: None}), settings).code == "message.missing_field"


@pytest.mark.parametrize("value", [[None], ["a", None]])
def test_a_null_inside_depends_on_is_wrong_type(value: list[Any], settings: Settings) -> None:
    assert rejected(raw(depends_on=value), settings).code == "message.wrong_type"


# --- numeric knobs: type and range ---------------------------------------------------------

#: (where, range, a value below, a value above); ``None``: nothing below (or above).
BOUNDS = [
    ("config.min_resolution", job_limits.MIN_RESOLUTION, 63, 2049),
    ("config.inference_steps", job_limits.INFERENCE_STEPS, 0, 101),
    ("config.dynamic_scale", job_limits.DYNAMIC_SCALE, 0, 4.01),
    ("config.motion_scale", job_limits.MOTION_SCALE, -1, 5),
    ("config.expand_ratio", job_limits.EXPAND_RATIO, -0.01, 2.5),
    ("config.seed", job_limits.SEED, -1, 2**32),
    ("output.fps", job_limits.OUTPUT_FPS, 0.5, 61),
    ("priority", job_limits.PRIORITY, -1, 10),
    ("ttl_s", job_limits.TTL_S, 0, 30 * 24 * 3600 + 1),
    ("duration", job_limits.DURATION_S, -0.5, None),
]


def with_field(where: str, value: Any) -> bytes:
    if "." not in where:
        return raw(**{where: value})
    parent, name = where.split(".")
    base = dict(SEED["config"]) if parent == "config" else {}
    return raw(**{parent: dict(base, **{name: value})})


def accepted(value: bytes, settings: Settings) -> Job:
    return decode(value, settings, check_url=scheme_check, check_callback=callback_scheme_check)


@pytest.mark.parametrize(("where", "bounds", "below", "above"), BOUNDS,
                         ids=[b[0] for b in BOUNDS])
def test_each_knob_outside_its_range_is_out_of_range(where: str, bounds: job_limits.Range,
                                                     below: Any, above: Any,
                                                     settings: Settings) -> None:
    for value in (below, above):
        if value is None:
            continue
        error = rejected(with_field(where, value), settings)
        assert error.code == "message.out_of_range", (value, error)
        assert repr(where) in error.message and bounds.describe() in error.message
        assert repr(value) in error.message
        assert error.task_id == "3f6c..."  # a rejected row follows
    hi = bounds.hi if bounds.hi != float("inf") else 10
    for value in ({bounds.lo + 1, hi} if bounds.lo_open else {bounds.lo, hi}):
        value = int(value) if bounds.integer else float(value)
        job = accepted(with_field(where, value), settings)
        assert json.loads(job.payload_json())[where.split(".")[0]] is not None


@pytest.mark.parametrize(("where", "bounds"), [(b[0], b[1]) for b in BOUNDS],
                         ids=[b[0] for b in BOUNDS])
def test_each_knob_of_the_wrong_type_is_wrong_type(where: str, bounds: job_limits.Range,
                                                   settings: Settings) -> None:
    wrong: list[Any] = [True, False, "3", [3], {"v": 3}]
    if bounds.integer:
        wrong += [1e9, 25.5, 3.0, 1e2]  # a float is never an integer, however whole
    for value in wrong:
        error = rejected(with_field(where, value), settings)
        assert error.code == "message.wrong_type", (value, error)
        assert repr(where) in error.message


def test_json_nan_and_infinity_are_wrong_type_for_a_knob(settings: Settings) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        value = raw(config={"dynamic_scale": 1.5}).replace(b"1.5", literal)
        assert rejected(value, settings).code == "message.wrong_type"


def test_a_huge_integer_is_out_of_range_not_a_crash(settings: Settings) -> None:
    value = raw(config={"min_resolution": 7}).replace(b"7", b"1" + b"0" * 40)
    assert rejected(value, settings).code == "message.out_of_range"


def test_duration_is_capped_by_the_max_audio_setting() -> None:
    settings = load(max_audio_s=120)
    accepted(raw(duration=120), settings)
    error = rejected(raw(duration=120.5), settings)
    assert error.code == "message.out_of_range"
    assert "SONIC_MAX_AUDIO_S=120" in error.message and "'duration'" in error.message


def test_whole_and_fractional_numbers_pass_for_number_knobs(settings: Settings) -> None:
    job = accepted(raw(config={"dynamic_scale": 2, "expand_ratio": 0}, ttl_s=60), settings)
    assert job.config.dynamic_scale == 2.0 and isinstance(job.config.dynamic_scale, float)
    assert job.config.expand_ratio == 0.0 and job.ttl_s == 60.0


def test_out_of_range_codes_are_documented_with_every_range() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "`message.out_of_range`" in readme
    for where, bounds in job_limits.RANGES.items():
        assert f"`{where}`" in readme, where
        if bounds.hi != float("inf"):
            assert job_limits.show_number(bounds.hi) in readme, where


# --- task ids --------------------------------------------------------------------------------

BAD_IDS = ["..", ".", "../x", "../../x", "/tmp/x", "/abs", "a/b", "a\\b", "a\x00b", ".hidden",
           "x" * 129, "", " a", "a b", "caf\u00e9", "\u0430bc",  # Cyrillic a, a look-alike
           "ab\u2215c",  # division slash
           "\uff0e\uff0e", "a\nb", "a\u200bb", "a%2Fb", "~root", "a;b", "a*b", "1\uff10"]
GOOD_IDS = ["a", "3f6c...", "A-b_c:d.e", "x" * 128, "0", "job:2024-01-01T00:00:00",
            "_a", "-a", ":a"]


@pytest.mark.parametrize("task_id", BAD_IDS)
def test_an_id_that_could_leave_a_directory_is_refused(task_id: str, settings: Settings) -> None:
    assert not is_task_id(task_id)
    error = rejected(raw(task_id=task_id), settings)
    assert error.code == "message.wrong_type" and "'task_id'" in error.message
    assert error.task_id is None  # no row under an id that cannot be one
    error = rejected(raw(task_id="fine", depends_on=["ok", task_id]), settings)
    assert error.code == "message.wrong_type" and "'depends_on.1'" in error.message


@pytest.mark.parametrize("task_id", GOOD_IDS)
def test_the_documented_ids_are_accepted(task_id: str, settings: Settings) -> None:
    assert accepted(raw(task_id=task_id, depends_on=[task_id]), settings).task_id == task_id


def test_an_id_with_a_trailing_newline_is_refused(settings: Settings) -> None:
    assert not is_task_id("abc\n")
    assert rejected(raw(task_id="abc\n"), settings).code == "message.wrong_type"


# --- a BOM, and ids of invalid JSON ----------------------------------------------------------

def test_a_utf8_bom_before_the_json_is_ignored(settings: Settings) -> None:
    job = accepted(b"\xef\xbb\xbf" + raw(), settings)
    assert job.task_id == "3f6c..."
    assert json.loads(job.payload_json())["duration"] == 30.5


def test_a_bom_before_bad_json_still_reads_the_id(settings: Settings) -> None:
    error = rejected(b"\xef\xbb\xbf" + raw()[:-1], settings)
    assert (error.code, error.task_id) == ("message.invalid_json", "3f6c...")


@pytest.mark.parametrize("value", [
    raw() + b" trailing garbage",
    raw() + b"\n" + raw(task_id="3f6c..."),  # two objects in one value
    raw()[:-1],  # truncated
    raw()[:90],  # truncated inside a later string
    raw().replace(b'"duration": 30.5', b'"duration": 30.5,,'),  # a stray comma
    raw().replace(b'"duration": 30.5', b"'duration': 30.5"),  # single quotes after the id
    raw().replace(b'"duration": 30.5', b'"duration": 30.5 /* comment */'),
    raw().replace(b'"duration": 30.5', b"duration: 30.5"),  # an unquoted key
    b'{"task_id": "3f6c...", "audio_url": ',
    b' \r\n{"task_id":"3f6c..."',
], ids=["garbage", "two-objects", "truncated", "truncated-string", "comma", "single-quotes",
        "comment", "bare-key", "no-value", "whitespace-first"])
def test_invalid_json_with_a_readable_id_names_it(value: bytes, settings: Settings) -> None:
    error = rejected(value, settings)
    assert error.code == "message.invalid_json"
    assert error.task_id == "3f6c..."


@pytest.mark.parametrize("value", [
    b'{"metadata": {"task_id": "nested"}, "x": ',  # only a nested id
    b'{"a": [{"task_id": "in-list"}], ',
    b'{"task_id": "one", "task_id": "two", ',  # two ids: ambiguous
    b"{'task_id': 'single'",
    b'{"x": \'}\', "task_id": "after-quote"',
    b'{"task_id": "../etc"',
    b'{"task_id": 42,',
    b'{"task_id": null,',
    b'["task_id", "x"',
    b'{"task_id": "unterminated',
    b'{"a": "b"} {"task_id": "second-object"}',
], ids=["nested", "in-list", "two-ids", "single-quoted", "quote-then-id", "bad-id", "number",
        "null", "array", "unterminated", "second-object"])
def test_invalid_json_without_a_reliable_id_names_none(value: bytes, settings: Settings) -> None:
    error = rejected(value, settings)
    assert error.code == "message.invalid_json"
    assert error.task_id is None


def test_peek_task_id_treats_nulls_and_nothing_as_no_id() -> None:
    assert peek_task_id(None) is None
    assert peek_task_id(b"") is None
    assert peek_task_id(b"null") is None
    assert peek_task_id(b'{"task_id": null}') is None
    assert peek_task_id(b'{"task_id": ".."}') is None
    assert peek_task_id(b'{"task_id": "ok.1"} tail') == "ok.1"


@pytest.mark.parametrize("engine", ["bogus", "Builtin", "builtin ", "bench", "x" * 64])
def test_an_engine_no_worker_knows_is_refused_at_the_door(engine: str,
                                                          settings: Settings) -> None:
    """Not after preprocess ran: message.out_of_range, naming the known engines (the
    bench engine only while SONIC_BENCH_ENGINE is on)."""
    exc = rejected(raw(engine=engine), settings)
    assert exc.code == "message.out_of_range" and exc.task_id == SEED["task_id"]
    assert "field 'engine'" in exc.message and "builtin, remote, sonic" in exc.message


@pytest.mark.parametrize("engine", ["builtin", "sonic", "remote", ""])
def test_the_known_engines_pass_the_door(engine: str, settings: Settings) -> None:
    """("" is the default engine, as the workers read it.)"""
    assert decode(raw(engine=engine), settings).engine == engine


def test_the_bench_engine_passes_only_while_it_is_on(settings: Settings) -> None:
    on = settings.model_copy(update={"bench_engine": True})
    assert decode(raw(engine="bench"), on).engine == "bench"
    assert rejected(raw(engine="bench"), settings).code == "message.out_of_range"
