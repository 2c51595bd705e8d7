"""The Celery release check: the installed releases pass; any other is config.invalid,
naming what is installed and what the pin wants."""

from __future__ import annotations

import pytest

from pipeline import celery_pin
from pipeline.errors import ConfigError


def test_the_installed_releases_are_the_pinned_ones() -> None:
    celery_pin.check()


@pytest.mark.parametrize("versions, named", [
    ({"celery": "5.6.2", "kombu": "5.7.0"}, "celery 5.6.2"),
    ({"celery": "5.7.0", "kombu": "5.6.0"}, "kombu 5.6.0"),
    ({"celery": "6.0.0", "kombu": "6.0.0"}, "celery 6.0.0, kombu 6.0.0"),
    ({"celery": "5.7.0"}, "kombu None"),
])
def test_any_other_release_is_refused_with_what_to_do(versions: dict[str, str],
                                                      named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        celery_pin.check(versions)
    assert caught.value.code == "config.invalid"
    message = str(caught.value)
    assert named in message and "celery 5.7.0, kombu 5.7.0" in message
    assert "pipeline/celery_pin.py" in message
