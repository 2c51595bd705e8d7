"""The error tree: stable codes, recoverable vs permanent."""

from __future__ import annotations

import inspect

from pipeline import errors


def test_every_default_code_is_documented() -> None:
    branches = {errors.PipelineError, errors.RecoverableError, errors.PermanentError}
    concrete = [c for _, c in inspect.getmembers(errors, inspect.isclass)
                if issubclass(c, errors.PipelineError) and c not in branches]
    assert len(concrete) > 10
    assert [c.__name__ for c in concrete if c.code not in errors.CODES] == []


def test_recoverable_and_permanent_branches() -> None:
    assert errors.StorageError("s3 503").retryable
    assert not errors.AudioError("bad", code="audio.undecodable").retryable
    err = errors.ImageError("no face in avatar.jpg", code="image.no_face")
    assert isinstance(err, errors.PermanentError)
    assert str(err) == "image.no_face: no face in avatar.jpg"
    assert err.as_dict() == {"code": "image.no_face", "message": "no face in avatar.jpg"}


def test_invalid_message_carries_coordinates() -> None:
    err = errors.InvalidMessage("not JSON", partition=3, offset=17)
    assert (err.code, err.partition, err.offset, err.task_id) == (
        "message.invalid_json", 3, 17, None)
