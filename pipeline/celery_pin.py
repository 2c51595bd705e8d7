"""The one Celery release the pipeline publishes its chains on, and the undocumented part
of its API it uses.

A job's chain travels as Celery's own chain message: the first task, carrying the rest of
the chain in its ``chain`` option, last step first (the message protocol's ``embed.chain``,
what ``chain(...).apply_async()`` sends). Two places publish that message themselves:

    pipeline/chains.py        dispatch_one: ``first.apply_async(chain=rest[::-1])``
    pipeline/stages/glue.py   publish_next: a stage publishes its next step with the rest
                              of ``task.request.chain`` (documented), after its own commit

``apply_async``'s ``chain`` keyword is passed through to the message unchanged in
:data:`PINNED`'s releases but is not among its documented options. :func:`check` runs
where those messages are produced (the worker app's import, the bridge's start) and
refuses any other release (``config.invalid``), so an upgrade re-checks both places
before the pin moves.
"""

from __future__ import annotations

import celery
import kombu

from pipeline.errors import ConfigError

#: The releases whose chain message the two places above were read against (setup.cfg
#: pins the same).
PINNED = {"celery": "5.7.0", "kombu": "5.7.0"}


def check(versions: dict[str, str] | None = None) -> None:
    """Raise :class:`ConfigError` unless Celery and kombu (or ``versions``, for tests) are
    :data:`PINNED`."""
    found = versions if versions is not None else {"celery": celery.__version__,
                                                   "kombu": kombu.__version__}
    wrong = {name: found.get(name) for name, want in PINNED.items() if found.get(name) != want}
    if wrong:
        have = ", ".join(f"{name} {version}" for name, version in wrong.items())
        raise ConfigError(
            f"{have} installed, but the pipeline publishes chains through "
            f"{', '.join(f'{n} {v}' for n, v in PINNED.items())}'s chain message "
            f"(pipeline/chains.py, pipeline/stages/glue.py; see pipeline/celery_pin.py): "
            f"install those releases, or re-check both places and move the pin")
